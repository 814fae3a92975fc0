"""Stage 6. Takes a golden image and the fleet's devices; gives per-device images and cards:
identity (host keys, node passwords), personalization and safe flashing.
"""
