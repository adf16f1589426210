"""Which model serves which tenant."""

from __future__ import annotations

from mesh.tenants import Tenants
from services.nlu.backend import NluBackend


class NluError(Exception):
    """Base of the errors the servicer turns into gRPC statuses."""


class UnknownTenant(NluError):
    pass


class ModelNotReady(NluError):
    pass


class ModelRegistry:
    """The default model and the tenants' own; models arrive as they load.

    A tenant without a model of its own uses the default one. An empty tenant
    id means the default model.
    """

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants
        self._default: NluBackend | None = None
        self._own: dict[str, NluBackend] = {}

    def set_default(self, backend: NluBackend) -> None:
        self._default = backend

    def set_tenant_model(self, tenant_id: str, backend: NluBackend) -> None:
        self._own[tenant_id] = backend

    @property
    def ready(self) -> bool:
        return self._default is not None

    def for_tenant(self, tenant_id: str) -> NluBackend:
        if tenant_id:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                raise UnknownTenant(f"tenant {tenant_id!r} is not known")
            if tenant.nlu_model:
                own = self._own.get(tenant_id)
                if own is None:
                    raise ModelNotReady(f"the model of tenant {tenant_id!r} is not loaded yet")
                return own
        if self._default is None:
            raise ModelNotReady("the NLU model is not loaded yet")
        return self._default
