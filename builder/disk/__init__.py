"""The rootless image engine: partition tables, sparse copies, FAT and ext4 edits."""
