"""TLS and mutual TLS between the services, from mounted certificate files.

Off by default: every gRPC server and channel is plaintext until
``MESH_TLS_CERT`` or ``MESH_TLS_CA`` is set. One set of variables serves a
process both as server and as client:

- ``MESH_TLS_CERT``, ``MESH_TLS_KEY``: this process's certificate chain and
  key (PEM). A gRPC server presents them; a channel presents them as its
  client certificate, so for mutual TLS the certificate needs both the
  ``serverAuth`` and ``clientAuth`` extended key usages.
- ``MESH_TLS_CA``: the CA bundle that peers' certificates chain to: channels
  verify servers with it (the system's roots without it), servers verify
  client certificates with it.
- ``MESH_TLS_CLIENT_AUTH``: ``none`` (the default) or ``require``: a server
  then refuses any client without a certificate signed by ``MESH_TLS_CA``.
- ``MESH_TLS_SERVER_NAME``: the name channels expect in servers'
  certificates, when it is not the host of the target.

The files are read when a server or channel is made, that is at start-up:
a renewed certificate takes effect when the process restarts. A missing or
unreadable file, a key that does not match its certificate or a CA bundle that
does not parse is a `ConfigError` at start-up, not a failed handshake later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mesh.config import ConfigError, Env

CLIENT_AUTH_MODES = ("none", "require")


def _read_pem(name: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}={path} cannot be read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{name}={path} is not a PEM file")
    return data


@dataclass(frozen=True)
class MeshTls:
    """What a server or channel of this process uses; the default is plaintext."""

    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    root_certificates: bytes | None = None
    require_client_auth: bool = False
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return self.certificate_chain is not None or self.root_certificates is not None

    @property
    def mode(self) -> str:
        """``off``, ``tls`` or ``mutual`` (for logs and metrics)."""
        if not self.enabled:
            return "off"
        return "mutual" if self.require_client_auth else "tls"

    @classmethod
    def from_env(cls, env: Env | None = None) -> MeshTls:
        """The settings of ``MESH_TLS_*``, with every file read and checked."""
        env = env or Env()
        cert_path, key_path = env.optional("MESH_TLS_CERT"), env.optional("MESH_TLS_KEY")
        ca_path = env.optional("MESH_TLS_CA")
        client_auth = env.string("MESH_TLS_CLIENT_AUTH", "none").strip().lower()
        server_name = env.optional("MESH_TLS_SERVER_NAME")
        if client_auth not in CLIENT_AUTH_MODES:
            raise ConfigError(
                f"MESH_TLS_CLIENT_AUTH={client_auth!r}: expected one of "
                + ", ".join(CLIENT_AUTH_MODES)
            )
        if (cert_path is None) != (key_path is None):
            raise ConfigError("MESH_TLS_CERT and MESH_TLS_KEY are set together or not at all")
        if client_auth == "require" and ca_path is None:
            raise ConfigError(
                "MESH_TLS_CLIENT_AUTH=require needs MESH_TLS_CA to verify clients' certificates"
            )
        if cert_path is None and ca_path is None:
            if server_name is not None:
                raise ConfigError(
                    "MESH_TLS_SERVER_NAME is set but TLS is off (set MESH_TLS_CA or MESH_TLS_CERT)"
                )
            return cls()
        chain = key = roots = None
        if cert_path is not None and key_path is not None:
            chain = _read_pem("MESH_TLS_CERT", cert_path)
            key = _read_pem("MESH_TLS_KEY", key_path)
            try:  # a key that does not match would otherwise fail only at the first handshake
                ssl.create_default_context().load_cert_chain(cert_path, key_path)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"MESH_TLS_KEY={key_path} does not match MESH_TLS_CERT={cert_path}, "
                    f"or one of them is not valid: {exc}"
                ) from None
        if ca_path is not None:
            roots = _read_pem("MESH_TLS_CA", ca_path)
            try:
                ssl.create_default_context(cafile=ca_path)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"MESH_TLS_CA={ca_path} holds no valid certificate: {exc}"
                ) from None
        return cls(chain, key, roots, client_auth == "require", server_name)

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.certificate_chain is None or self.private_key is None:
            raise ConfigError(
                "TLS is on (MESH_TLS_CA is set) but a gRPC server needs its own certificate: "
                "set MESH_TLS_CERT and MESH_TLS_KEY"
            )
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


PLAINTEXT = MeshTls()
