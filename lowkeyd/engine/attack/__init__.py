"""The LowKey attack inside a visibility budget: :class:`LowKey` and its parts, one technique per module."""

from lowkeyd.engine.attack.lowkey import AttackResult, LowKey

__all__ = ["AttackResult", "LowKey"]
