from . import dispatch as _dispatch  # noqa: F401  registers the [dispatch] section model
from . import ops as _ops  # noqa: F401  registers the [ops] section model
from . import console as _console  # noqa: F401  registers the [console] section model
from . import portal as _portal  # noqa: F401  registers the [portal] section model
