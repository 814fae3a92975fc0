"""What is inside an image, read from the image itself: the OS (family, release, architecture,
boot mount: flavor.py), the first-boot seed format it understands (osformat.py, from the seed
formats' records) and its installed packages (dpkg.py). Built on the image engine (builder/disk).
"""
