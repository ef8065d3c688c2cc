"""runas-agent: the node-side Run As agent."""

__version__ = "0.1.0"
