"""What the agent says: its states (firstboot/state.py's table), and the K3s log lines it
recognises."""

from firstboot.state import STATES

# Lines the K3s agent logs when it cannot join, and what they mean for the operator.
KNOWN_FAILURES = (
    (  # pkg/etcd/etcd.go: join, a member of this node's name exists (a re-flashed server)
        "duplicate node name found, please use a unique name for this node",
        "etcd refuses this server: the cluster still has the etcd member of node {node} from "
        "before this card was re-flashed; retire it from a machine with the cluster's "
        "kubeconfig: pifleet node retire {node} --kubeconfig F (K3s then removes the member "
        "and this device rejoins by itself)",
    ),
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

DESCRIPTIONS = dict(STATES)
