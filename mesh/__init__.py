"""What every service of the mesh needs alike.

The gRPC server bootstrap (health, reflection, interceptors, graceful
shutdown), typed settings from the environment, structured logging,
Prometheus metrics and tenants. It runs on Python 3.10 and 3.11 and on any
protobuf runtime the services use, so it imports no generated stubs.
"""

from mesh.config import ConfigError, Env
from mesh.logging import configure_logging, get_logger, request_id_var
from mesh.paths import cache_dir, repo_root

__all__ = [
    "ConfigError",
    "Env",
    "cache_dir",
    "configure_logging",
    "get_logger",
    "repo_root",
    "request_id_var",
]
