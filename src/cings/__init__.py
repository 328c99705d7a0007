"""cings: context-grounded instruction tuning (CINGS, arXiv 2506.15480)."""

from .records import Context, Record, RecordError, Segment, read_records, write_records
from .render import Dropped, Kind, Mode, Rendered, Renderer, RenderOptions, parse_mode, render_example

__version__ = "0.1.0"
__all__ = ["Context", "Record", "RecordError", "Segment", "read_records", "write_records", "Dropped", "Kind",
           "Mode", "Rendered", "Renderer", "RenderOptions", "parse_mode", "render_example", "__version__"]
