"""Example inventory for real servers: copy it, put your hosts in, deploy.

    pyinfra inventories/prod.py deploy.py
    pytest tests/verify --inventory inventories/prod.py

asgi-fleet connects over SSH as an unprivileged user and becomes root with
sudo (passwordless sudo for that user, or add `_sudo_password`). Settings
for every host come from group_data/all.py; override them per group in
inventories/group_data/GROUP.py, or per host below.
"""

_ssh = {
    "ssh_user": "deploy",  # an unprivileged user with sudo rights
    "ssh_key": "~/.ssh/id_ed25519",
    "_sudo": True,
}

app = [
    ("web1.example.com", dict(_ssh)),
    ("web2.example.com", dict(_ssh)),
    # A host carrying two apps: each app gets its own user, unit, paths and port.
    ("web3.example.com", dict(_ssh, apps=[
        {"app_name": "hello"},
        {"app_name": "shop", "bind": "0.0.0.0:8001"},
    ])),
]
