"""What the agent says: its states, and the K3s log lines it recognises."""

# Lines the K3s agent logs when it cannot join, and what they mean for the operator.
KNOWN_FAILURES = (
    (
        "Node password rejected",
        "Node password rejected: the server already knows node {node} with another password; "
        "delete it there (kubectl delete node {node}; kubectl -n kube-system delete secret "
        "{node}.node-password.k3s) or personalize this device with its stored node password",
    ),
    ("token CA hash does not match", "token CA hash does not match the cluster CA certificate"),
    ("401 Unauthorized", "the server rejected the token (401 Unauthorized)"),
    ("not authorized", "the server rejected the token (401 not authorized)"),
)

DESCRIPTIONS = {
    "load": "reading the join config and checking the device",
    "network": "waiting for the network",
    "clock": "checking the clock",
    "verify": "checking the server's CA and proving the token",
    "configure": "writing the K3s configuration",
    "start": "starting K3s",
    "cleanup": "removing join secrets",
}
