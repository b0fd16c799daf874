#!/usr/bin/env python3
"""Packs a root filesystem directory into a one-layer OCI image archive (an OCI image layout in a tar), which
`ctr -n k8s.io images import` loads into containerd: images for the local node without a Docker engine.

    oci_image.py ROOTFS OUT.tar NAME:TAG [--entrypoint JSON] [--cmd JSON] [--user UID:GID] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile


def blob(out: tarfile.TarFile, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def layer(rootfs: str) -> tuple[bytes, str]:
    """The rootfs as a gzip'd tar (owned by root, paths relative), and the digest of the uncompressed tar."""
    with tempfile.TemporaryFile() as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
            for entry in sorted(os.listdir(rootfs)):
                t.add(os.path.join(rootfs, entry), arcname=entry)
        raw.seek(0)
        plain = raw.read()
    return gzip.compress(plain, compresslevel=1), hashlib.sha256(plain).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("rootfs")
    p.add_argument("out")
    p.add_argument("name")
    p.add_argument("--entrypoint", type=json.loads, default=None)
    p.add_argument("--cmd", type=json.loads, default=None)
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    a = p.parse_args()

    gz, diff_id = layer(a.rootfs)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {k: v for k, v in {"Entrypoint": a.entrypoint, "Cmd": a.cmd, "User": a.user, "Env": a.env}.items() if v},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }
    with tarfile.open(a.out, "w") as out:
        layer_desc = blob(out, gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        config_desc = blob(out, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = blob(out, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        manifest_desc["annotations"] = {"io.containerd.image.name": a.name,
                                        "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]}
        for name, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                           ("index.json", {"schemaVersion": 2, "manifests": [manifest_desc]})):
            body = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            out.addfile(info, io.BytesIO(body))


if __name__ == "__main__":
    main()
