"""A deployment without torch (issue 34): a virtual environment holding exactly ONNX Runtime, numpy and
sentencepiece, the service's starlette, uvicorn and prometheus-client (with what they need), and this package
installed with
``--no-deps``. torch and fairseq cannot be imported there, and the filter and the service translate exactly as
the translator does in the development environment."""

import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

#: what the deployment may hold (pip's own tools besides)
ALLOWED = {"onnxruntime", "numpy", "sentencepiece", "starlette", "uvicorn", "fairseq-bahdanau", "fairseq_bahdanau",
           "anyio", "idna", "sniffio", "typing-extensions", "typing_extensions", "h11", "click", "prometheus-client",
           "prometheus_client", "pip", "setuptools", "wheel"}


def pinned(name: str) -> str:
    """``name==version`` of this environment's copy (so that pip takes it from its cache)."""
    return f"{name}=={importlib.metadata.version(name)}"


def test_a_venv_without_torch_runs_the_filter_and_the_service(translators, tmp_path):
    from fairseq_bahdanau.deploy.serve import load

    from helpers import ROOT

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONWARNINGS="error::DeprecationWarning", OMP_NUM_THREADS="1")

    def pip(*args: str) -> None:
        proc = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                              capture_output=True, text=True, env=dict(env, PYTHONWARNINGS="ignore"))
        assert proc.returncode == 0, proc.stderr[-3000:]

    pip("--no-deps", pinned("onnxruntime"))  # its other requirements are for its Python tools, not sessions
    pip(pinned("numpy"), pinned("sentencepiece"), pinned("starlette"), pinned("uvicorn"), pinned("prometheus-client"))
    source = tmp_path / "src"  # the package, installed as a deployment installs it
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "fairseq_bahdanau"), source / "fairseq_bahdanau",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pip("--no-deps", str(source))
    shutil.rmtree(source)

    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                            capture_output=True, text=True, env=dict(env, PYTHONWARNINGS="ignore"), check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert names <= ALLOWED, f"the deployment holds more than it should: {sorted(names - ALLOWED)}"
    for module in ("torch", "fairseq"):
        proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert proc.returncode != 0 and "No module named" in proc.stderr

    lines = (translators.raw / "test.src").read_text().splitlines()[:8] + [""]
    expected = load(str(translators.attention))(lines)
    proc = subprocess.run([python, "-m", "fairseq_bahdanau.deploy.serve", str(translators.attention)],
                          input="".join(line + "\n" for line in lines), capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == expected

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([python, "-m", "fairseq_bahdanau.deploy.serve", "--port", str(port),
                               str(translators.attention), str(translators.encdec)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the service did not start"
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/translate",
                                         data=json.dumps({"text": lines[:4], "model": "encdec"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
        assert [r["translation"] for r in answer["results"]] == load(str(translators.encdec))(lines[:4])
    finally:
        server.terminate()
        server.wait(timeout=30)
