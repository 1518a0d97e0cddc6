"""Gymnasium environments and wrappers that follow maskrl's mask convention."""
