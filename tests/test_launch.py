"""The launch scripts: valid bash, no placeholder, and `--dry-run` prints the commands a
multi-host run needs (checked by parsing them as a shell would)."""
import os
import pathlib
import re
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.iterdir())


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
  """The commands `script --dry-run args` prints, each split into words."""
  out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, **(env or {})})
  assert out.returncode == 0, out.stderr
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def remote(command: list[str]) -> list[str]:
  """The words of the remote shell command in `gcloud ... --command=CMD` or `ssh HOST CMD`."""
  for word in command:
    if word.startswith("--command="):
      return shlex.split(word[len("--command="):])
  return shlex.split(command[command.index("BatchMode=yes") + 2])


def test_scripts_parse_and_name_no_placeholder():
  assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "multihost_gpu.sh", "slurm_gpu.sbatch"}
  for path in SCRIPTS:
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert not re.search(r"your-org|example\.com|<[a-z_]+>|TODO|FIXME", text), path.name


def test_tpu_pod_ships_the_working_tree_installs_and_starts_every_worker():
  commands = dry_run("tpu_pod.sh", "--project=p1", "--topology=v5e:4x4", "my-tpu",
                     "us-central2-b", "gs://b/run 1", "--config.epochs=3", "--config.arch=a b")
  tpu_venv, preflight, pack, copy, install, start = commands
  # Preflight first, before anything is packed or copied: the config's step compiled for
  # the slice's topology here, with the run's own config arguments.
  assert tpu_venv[:2] == ["make", "-C"] and tpu_venv[-1] == "tpu-install"
  assert preflight == [".venv-tpu/bin/python", "-m", "sdarts_jax.tpu_check",
                       "--topology=v5e:4x4", "--programs=step",
                       "--config=configs/cifar10_adv.py", "--config.epochs=3",
                       "--config.arch=a b"]
  assert "git ls-files -z --cached --others --exclude-standard" in " ".join(pack)
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert copy[6] == "my-tpu:sdarts_jax.tar.gz" and copy[5].endswith(".tar.gz")
  for c in (copy, install, start):
    assert {"--zone=us-central2-b", "--worker=all", "--project=p1"} <= set(c), c
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  steps = " ".join(remote(install))
  assert "tar -xzf sdarts_jax.tar.gz -C sdarts_jax" in steps
  assert "pip install -q -e .[tpu]" in steps
  words = remote(start)
  assert "SDARTS_DISTRIBUTED=auto" in words
  main = words[words.index("SDARTS_DISTRIBUTED=auto") + 1:]
  assert main[:3] == [".venv/bin/python", "-m", "sdarts_jax.main"]
  # Arguments with spaces arrive as one word each on the worker.
  assert main[3:7] == ["--workdir=gs://b/run 1", "--config=configs/cifar10_adv.py",
                       "--config.epochs=3", "--config.arch=a b"]
  assert start[-4:] == ["|", "tee", "-a", "runs/tpu_my-tpu.log"]


def test_tpu_pod_clones_a_named_commit_instead():
  commands = dry_run("tpu_pod.sh", "--repo=https://github.com/me/sdarts_jax", "--commit=abc123",
                     "--no-preflight", "t", "z", "gs://b/r", "--config=configs/cifar10_rs.py")
  assert len(commands) == 2 and not any("scp" in c for c in commands)
  steps = " ".join(remote(commands[0]))
  assert "git clone -q https://github.com/me/sdarts_jax sdarts_jax" in steps
  assert "checkout -q abc123" in steps
  assert "--config=configs/cifar10_rs.py" in remote(commands[1])
  assert "--config=configs/cifar10_adv.py" not in remote(commands[1])


@pytest.mark.parametrize("accelerator,topology", [("v5litepod-16", "v5e:4x4"),
                                                   ("v5litepod-8", "v5e:2x4"),
                                                   ("v6e-8", "v6e:2x4"), ("v4-16", "v4:2x2x2")])
def test_tpu_pod_preflight_takes_the_topology_from_the_accelerator_type(tmp_path, accelerator,
                                                                       topology):
  """Without --topology, the TPU's accelerator type (from `gcloud ... describe`, faked
  here) names the preflight's topology; a type with no known name is an error."""
  fake = tmp_path / "gcloud"
  fake.write_text(f"#!/bin/sh\necho {accelerator}\n")
  fake.chmod(0o755)
  env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
  commands = dry_run("tpu_pod.sh", "t", "z", "gs://b/r", env=env)
  assert f"--topology={topology}" in commands[1]
  fake.write_text("#!/bin/sh\necho v9x-12\n")
  out = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "t", "z", "w"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, **env})
  assert out.returncode == 2 and "v9x-12" in out.stderr and "--topology" in out.stderr


@pytest.mark.parametrize("args", [["t", "z"], ["--repo=x", "t", "z", "w"], ["--bogus", "t", "z", "w"]])
def test_tpu_pod_usage_errors(args):
  out = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 2 and out.stdout == ""


def test_multihost_gpu_starts_one_process_per_host_with_its_id():
  commands = dry_run("multihost_gpu.sh", "--hosts=gpu-a,gpu-b,gpu-c", "--port=2222",
                     "/shared/runs/x", "--config.epochs=3")
  assert [c[:4] for c in commands] == [["ssh", "-o", "BatchMode=yes", h]
                                       for h in ("gpu-a", "gpu-b", "gpu-c")]
  for i, c in enumerate(commands):
    words = remote(c)
    assert words[:3] == ["cd", str(ROOT), "&&"]
    env = dict(w.split("=", 1) for w in words[4:7])
    assert env == {"JAX_COORDINATOR_ADDRESS": "gpu-a:2222", "JAX_NUM_PROCESSES": "3",
                   "JAX_PROCESS_ID": str(i)}
    assert words[7:] == [".venv/bin/python", "-m", "sdarts_jax.main", "--workdir=/shared/runs/x",
                         "--config=configs/cifar10_adv.py", "--config.epochs=3"]
    assert c[-6:] == ["2>&1", "|", "sed", "-u", f"s/^/[{c[3]}] /", "&"]


def test_multihost_gpu_on_this_host_needs_the_three_variables():
  (_, start), = [dry_run("multihost_gpu.sh", "/w", env={"COORDINATOR": "h0:1", "NUM_HOSTS": "2",
                                                           "HOST_ID": "1"})]
  assert start[:4] == ["env", "JAX_COORDINATOR_ADDRESS=h0:1", "JAX_NUM_PROCESSES=2",
                       "JAX_PROCESS_ID=1"]
  out = subprocess.run(["bash", str(LAUNCH / "multihost_gpu.sh"), "/w"], capture_output=True,
                       text=True, timeout=30, env={"PATH": os.environ["PATH"]})
  assert out.returncode == 2 and "COORDINATOR" in out.stderr


def test_slurm_example_runs_the_gpu_script_on_every_node(tmp_path):
  fake = tmp_path / "scontrol"  # SLURM's node-list expansion
  # A long node list: a script that stops reading after the first line dies of SIGPIPE.
  fake.write_text("#!/bin/sh\necho node-a\necho node-b\nseq 100000\n")
  fake.chmod(0o755)
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "1",
         "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NTASKS": "2", "SLURM_SUBMIT_DIR": str(ROOT)}
  out = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "/shared/w", "--config.epochs=2"],
                       capture_output=True, text=True, timeout=30, env=env)
  assert out.returncode == 0, out.stderr
  srun = shlex.split(out.stdout.splitlines()[0][2:])
  assert srun[0] == "srun" and "--ntasks=2" in srun and "--ntasks-per-node=1" in srun
  assert "--export=ALL,COORDINATOR=node-a:12345" in srun
  assert srun[-4:] == ["launch/multihost_gpu.sh", "--dry-run", "/shared/w", "--config.epochs=2"]
  # What srun then runs on node 1 (SLURM_PROCID=1).
  (_, start), = [dry_run("multihost_gpu.sh", "/shared/w", "--config.epochs=2",
                          env={"COORDINATOR": "node-a:12345", "SLURM_NTASKS": "2",
                               "SLURM_PROCID": "1"})]
  assert start[1:4] == ["JAX_COORDINATOR_ADDRESS=node-a:12345", "JAX_NUM_PROCESSES=2",
                        "JAX_PROCESS_ID=1"]
  header = (LAUNCH / "slurm_gpu.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1" in header


def fake(directory: pathlib.Path, name: str, script: str) -> None:
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + script)
  path.chmod(0o755)


def test_tpu_pod_runs_the_commands_it_prints(tmp_path):
  """Not a dry run, from a checkout of its own (tracked, untracked, ignored and deleted
  files): a stand-in gcloud records its calls, names the accelerator type, keeps the
  shipped tarball and runs the remote commands through a shell (with a stand-in python),
  so the preflight, the shipped files, the quoting and the streamed, prefixed log are
  checked end to end; then a preflight that fails stops the launch before anything is
  copied, with its error line."""
  repo, bin_dir, worker = tmp_path / "repo", tmp_path / "bin", tmp_path / "worker"
  for d in (repo / "launch", repo / ".venv", repo / ".venv-tpu" / "bin", bin_dir, worker):
    d.mkdir(parents=True)
  (repo / "launch" / "tpu_pod.sh").write_text((LAUNCH / "tpu_pod.sh").read_text())
  (repo / ".gitignore").write_text(".venv/\n.venv-tpu/\n")
  check = repo / ".venv-tpu" / "bin" / "python"  # the compile check: its words, its verdict
  check.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/preflight\n'
                   f'[ -z "$FAIL" ] || {{ echo "error: step does not fit" >&2; exit 2; }}\n')
  check.chmod(0o755)
  fake(bin_dir, "make", f'echo "make $*" >> {tmp_path}/make')
  for name in ("tracked.py", "gone.py"):
    (repo / name).write_text(name)
  git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                                   "user.email=t@t", *a], check=True, capture_output=True)
  git("init", "-q")
  git("add", ".")
  git("commit", "-qm", "x")
  (repo / "gone.py").unlink()
  (repo / "untracked.txt").write_text("shipped too")
  (repo / ".venv" / "big").write_text("not shipped")
  fake(bin_dir, "gcloud", f"""
echo "$*" >> {tmp_path}/calls
for a in "$@"; do case $a in --command=*) cmd=${{a#--command=}} ;; esac; done
if [[ $4 == describe ]]; then echo v5litepod-16
elif [[ $4 == scp ]]; then cp "$5" {worker}/sdarts_jax.tar.gz
else cd {worker} && PATH={bin_dir}:$PATH bash -c "$cmd"; fi
""")
  fake(bin_dir, "python3", 'mkdir -p .venv/bin && printf \'#!/usr/bin/env bash\\necho "args: $*"\\n'
       'echo "env: $SDARTS_DISTRIBUTED"\\n\' > .venv/bin/python && chmod +x .venv/bin/python\n'
       'printf \'#!/bin/sh\\necho "pip $*" >> ../pip\\n\' > .venv/bin/pip && chmod +x .venv/bin/pip\n')
  out = subprocess.run(["bash", str(repo / "launch" / "tpu_pod.sh"), f"--log={tmp_path}/run.log",
                        "my-tpu", "z", "gs://b/r", "--config.arch=a b"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
  assert out.returncode == 0, out.stderr + out.stdout
  shipped = worker / "sdarts_jax"
  assert sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file()
                and ".venv/bin" not in str(p)) == [".gitignore", "launch/tpu_pod.sh",
                                                   "tracked.py", "untracked.txt"]
  assert (worker / "pip").read_text() == "pip install -q -e .[tpu]\n"
  log = (tmp_path / "run.log").read_text().splitlines()
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  assert log == [f"[{host}] args: -m sdarts_jax.main --workdir=gs://b/r "
                 f"--config=configs/cifar10_adv.py --config.arch=a b", f"[{host}] env: auto"]
  assert len((tmp_path / "calls").read_text().splitlines()) == 4  # describe, scp, 2 ssh
  assert (tmp_path / "make").read_text() == f"make -C {repo} -s tpu-install\n"
  assert (tmp_path / "preflight").read_text().split() == [
      "-m", "sdarts_jax.tpu_check", "--topology=v5e:4x4", "--programs=step",
      "--config=configs/cifar10_adv.py", "--config.arch=a", "b"]
  (tmp_path / "calls").unlink()
  out = subprocess.run(["bash", str(repo / "launch" / "tpu_pod.sh"), "my-tpu", "z", "gs://b/r"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAIL": "1"})
  assert out.returncode == 2
  assert "error: step does not fit" in out.stderr and "nothing was created or copied" in out.stderr
  assert (tmp_path / "calls").read_text().split()[3] == "describe"  # and nothing after it
  assert len((tmp_path / "calls").read_text().splitlines()) == 1


def test_multihost_gpu_runs_every_host_and_reports_a_failure(tmp_path):
  """Not a dry run: a stand-in ssh runs each remote command through a shell in a checkout
  whose python prints its environment and arguments (host gpu-b fails)."""
  bin_dir, checkout = tmp_path / "bin", tmp_path / "checkout"
  (checkout / ".venv" / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  fake(bin_dir, "ssh", 'bash -c "$4"\n')
  fake(checkout / ".venv" / "bin", "python",
       'echo "$JAX_PROCESS_ID/$JAX_NUM_PROCESSES@$JAX_COORDINATOR_ADDRESS: ${*: -1}"\n'
       '[[ $JAX_PROCESS_ID != 1 ]]\n')
  out = subprocess.run(["bash", str(LAUNCH / "multihost_gpu.sh"), "--hosts=gpu-a,gpu-b",
                        f"--remote-dir={checkout}", "/w", "--config.arch=a b"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
  assert out.returncode == 1
  lines = sorted(line for line in out.stdout.splitlines() if not line.startswith("+"))
  assert lines == ["[gpu-a] 0/2@gpu-a:12345: --config.arch=a b",
                   "[gpu-b] 1/2@gpu-a:12345: --config.arch=a b"]
