"""The rootless image engine: partition tables, sparse copies, FAT and ext4 edits.
Takes an image file; gives typed access to its partitions, with no mount and no root.
"""
