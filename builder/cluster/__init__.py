"""Cluster creation. Takes a fleet whose cluster.create is true; gives the K3s CA set and
server token (kept 0600 in cluster/ beside the fleet file) and the K10 CA hash every join pins.
"""
