"""learn-features: the LEARN pipeline (content extraction, PCH twin towers, Feast delivery)."""

__version__ = "0.1.0"
