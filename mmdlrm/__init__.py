"""mmdlrm: a scalable, multimodal movie recommender built on TorchRec's DLRM."""

__version__ = "0.1.0"
