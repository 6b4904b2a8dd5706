from . import dispatch as _dispatch  # noqa: F401  registers the [dispatch] section model
