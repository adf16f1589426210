"""The gateway: the Messenger webhook, a JSON channel for other clients, and
authentication in one place, in front of the dialogue service."""

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
