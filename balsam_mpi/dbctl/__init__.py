"""The project owner's tool, ``balsam-dbctl``: the cluster, its schema and its users."""
