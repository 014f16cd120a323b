"""Serving top-k lists from trained runs: the FAISS movie index, recommenders (index, whole catalogue, two
stages), and top-k lists for every user written to Parquet."""
