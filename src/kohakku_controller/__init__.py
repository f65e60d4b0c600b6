"""Kohakku controller: the control plane for skills run by remote dispatchers."""

__version__ = "0.1.0.dev0"
