"""The HTTP service over a trained run (`mmdlrm serve`): routes in app.py, the server and its limits in server.py."""
