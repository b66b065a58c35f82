"""The HTTP service (``sandbox serve``): the queue behind SandboxFusion-, Judge0- and native-shaped endpoints.

A client of the queue like ``sandbox submit``: requests are validated, turned into jobs, submitted
through :class:`sandbox.client.Client` and answered from the results. It never runs a program.

    core.py           the service: the queue client, grouping of identical programs, figures
    app.py            the ASGI application: authentication, body bound, the registry of surfaces
    native.py         /v1: jobs as this service defines them
    sandboxfusion.py  SandboxFusion's /run_code and /v1/ping
    judge0.py         Judge0 CE's /submissions, /languages, /statuses, /about, /config_info
"""

from sandbox.server.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
