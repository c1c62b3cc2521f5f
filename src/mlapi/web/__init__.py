"""The web UI on :9090: a predict form built from each model's spec, the history with its charts.

Pages are rendered on the server; the browser reaches the API only through this service.
"""

from mlapi.web.app import create_app

__all__ = ["create_app"]
