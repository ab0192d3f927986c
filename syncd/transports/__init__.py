"""Transports: one interface (`base.Transport`), one module per wire protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from .base import Transport

if TYPE_CHECKING:
    from ..archive import ArchiveStore
    from ..config import Config

log = structlog.get_logger("syncd")


def make_transport(config: Config, archive: ArchiveStore | None = None) -> Transport:
    """The transport `config` asks for (imported lazily: a2a-sdk is an optional extra)."""
    verify: bool | str = str(config.ca_bundle) if config.ca_bundle else True
    warning = config.cleartext_warning()
    if warning is not None:
        log.warning(warning)
    timeout = config.request_timeout
    match config.transport:
        case "local":
            from .local import LocalTransport

            assert archive is not None, "the local transport writes to the archive store"
            return LocalTransport(archive, base_url=config.serve_url)
        case "http":
            from .http import HttpTransport

            return HttpTransport(_url(config), key=config.key, timeout=timeout, verify=verify)
        case "capnweb-batch":
            from .capnweb import CapnwebBatchTransport

            return CapnwebBatchTransport(
                _url(config), key=config.key, timeout=timeout, verify=verify
            )
        case "capnweb-ws":
            from .capnweb import CapnwebWsTransport

            return CapnwebWsTransport(_url(config), key=config.key, timeout=timeout, verify=verify)
        case "a2a":
            from .a2a import A2aTransport

            return A2aTransport(
                _url(config),
                key=config.key,
                binding=config.a2a_binding,
                timeout=timeout,
                verify=verify,
            )
    raise ValueError(f"unknown transport {config.transport!r}")  # config validated it


def target_of(config: Config) -> str:
    """What a share belongs to: the same server reached by REST or capnweb shares its shares,
    A2A contexts and the local archive are their own."""
    if config.transport == "local":
        return f"local:{config.archive}"
    if config.transport == "a2a":
        return f"a2a:{config.url}"
    return f"share:{config.origin}"


def _url(config: Config) -> str:
    assert config.url, "remote transports need a url"  # config validated it
    return config.url
