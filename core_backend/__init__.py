"""Reference implementation of the core case-management system (the contract is
``backend_client/openapi.yaml``): runs in-process under ``make run`` (``embedded.EmbeddedBackend``) or
standalone (``tawasul backend serve``)."""
