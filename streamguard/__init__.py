"""streamguard: a resilient message-processing runtime for Kafka."""

__all__: list[str] = []
__version__ = "0.1.0"
