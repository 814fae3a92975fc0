"""First-boot seed formats, one module each. Takes the config and the plan; gives the files
the image's first-boot machinery reads from the boot partition (cloud-init NoCloud today).
"""
