"""Stage 5. Takes the customized image and the plan; gives what is written next to it:
.bmap, compressed copies, Imager OS list, manifest.json and SHA256SUMS.
"""
