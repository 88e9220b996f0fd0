"""Signed manifests: manifest.json signed and checked with an SSH key (ssh-keygen -Y), namespace yolo-compile."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from yolo_compile import fileio, runs
from yolo_compile.errors import CompileError

SIG = runs.MANIFEST + ".sig"
NAMESPACE = "yolo-compile"


def _ssh_keygen(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    if not shutil.which("ssh-keygen"):
        raise CompileError("ssh-keygen not found: install OpenSSH (8.2+) to sign or check manifests")
    return subprocess.run(["ssh-keygen", "-Y", *args], input=stdin, capture_output=True, timeout=60)


def sign_manifest(run_dir: Path, key: str) -> Path:
    """Sign run_dir/manifest.json with an SSH private key (ssh-keygen -Y sign); return manifest.json.sig."""
    out = _ssh_keygen("sign", "-f", str(Path(key).expanduser()), "-n", NAMESPACE, stdin=(run_dir / runs.MANIFEST).read_bytes())
    if out.returncode or not out.stdout:
        raise CompileError(f"ssh-keygen -Y sign -f {key} failed: {out.stderr.decode().strip()}; pass a private key "
                           "(e.g. ~/.ssh/id_ed25519) whose passphrase ssh-agent holds")
    return fileio.write_text(run_dir / SIG, out.stdout.decode())


def check_signature(run_dir: Path, signer: str | None, identity: str) -> tuple[bool, str]:
    """Return (ok, message) for manifest.json.sig: against signer (a .pub key or allowed_signers file) if given."""
    data, sig = (run_dir / runs.MANIFEST).read_bytes(), str(run_dir / SIG)
    if not signer:
        out = _ssh_keygen("check-novalidate", "-n", NAMESPACE, "-s", sig, stdin=data)
        return out.returncode == 0, ("signature intact (signer not checked: pass --signer KEY.pub)" if out.returncode == 0
                                     else f"signature does not match the manifest: {out.stderr.decode().strip()}")
    text = Path(signer).expanduser().read_text()
    with tempfile.TemporaryDirectory() as tmp:
        allowed = Path(signer).expanduser()
        if text.split(None, 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):  # a public key, not an allowed_signers file
            allowed = Path(tmp) / "allowed_signers"
            allowed.write_text(f'{identity} namespaces="{NAMESPACE}" {text.strip()}\n')
        out = _ssh_keygen("verify", "-f", str(allowed), "-I", identity, "-n", NAMESPACE, "-s", sig, stdin=data)
    msg = out.stdout.decode().strip() or out.stderr.decode().strip()
    return out.returncode == 0, msg
