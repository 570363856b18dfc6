# Written by pibake: the workers of this cluster, for Fabric 2 (Debian's python3-fabric, whose
# `fab` command is in the `fabric` package). Names resolve through the master's /etc/hosts, and
# the cluster key in ~/.ssh/id_ed25519 logs in without a prompt.
#   cd ~/cluster && fab run --cmd 'df -h /'
from fabric import ThreadingGroup, task

WORKERS = [
{% for w in cluster.workers %}
    "{{ w }}",
{% endfor %}
]


@task
def run(c, cmd="uptime"):
    """Run CMD on every worker at once and print each answer."""
    results = ThreadingGroup(*WORKERS).run(cmd, hide=True, warn=True)
    for conn, result in sorted(results.items(), key=lambda kv: kv[0].host):
        print(f"{conn.host}: {result.stdout.strip()}")
