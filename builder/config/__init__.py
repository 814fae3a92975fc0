"""Stage 1. Takes a fleet YAML file (and its devices_file); gives a typed, validated
`FleetConfig`, and reads the join token it names.
"""
