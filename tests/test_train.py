"""Training: exact resume, SIGKILL, preemption, 2 gloo ranks, a real MLflow server.

All on the CPU: the GPU paths (nccl, AMP) can't run on this machine.
"""

import os
import random
import signal
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import T2V, free_port, t2v
from pipeline.checkpoints import checkpoint_paths, load_latest, step_of
from pipeline.dist import preempt_signal
from pipeline.models import Generator, TimeConv
from pipeline.train import RankBatches, build_config, run

TINY = ["batch=4", "g_ch=4", "d_ch=4", "z_dim=8", "gru_dim=16", "img_frames=1", "tick_every=1", "workers=0"]


def cfg(prepared, run_dir, steps, *extra):
    return build_config(prepared / "frames", prepared / "vocab", run_dir, "debug_cpu",
                        TINY + [f"max_steps={steps}", "checkpoint_every=2",
                                f"tracking_uri=sqlite:///{prepared}/mlruns/mlflow.db", *extra])


def train_cli(prepared, run_dir, steps, *extra, **kw):
    args = ["train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
            "--preset", "debug_cpu", "--max-steps", steps]
    for s in TINY + ["checkpoint_every=2"]:
        args += ["--set", s]
    return t2v(*args, *extra, **kw)


def state(run_dir):
    s = load_latest(run_dir)
    return s["step"], {k: s[k] for k in ("G", "D_img", "D_vid", "G_ema", "opt_G", "opt_D")}


def assert_identical(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def straight(prepared):
    run_dir = prepared / "straight"
    r = run(cfg(prepared, run_dir, 8))
    assert r["status"] == "finished" and r["step"] == 8
    return state(run_dir)


def test_stop_and_resume_is_bit_exact(prepared, straight):
    run_dir = prepared / "halves"
    assert run(cfg(prepared, run_dir, 4))["step"] == 4
    first = state(run_dir)
    r = run(cfg(prepared, run_dir, 8))  # same run dir, larger max_steps: extends it
    assert r["step"] == 8
    assert_identical(state(run_dir), straight)
    with pytest.raises(AssertionError):
        assert_identical(first[1], straight[1])  # the check can fail: 4 steps != 8 steps


def test_sigkill_at_a_random_moment_then_resume_is_bit_exact(prepared, straight):
    run_dir = prepared / "killed"
    cmd = [T2V, "train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
           "--preset", "debug_cpu", "--max-steps", "8", "--tracking-uri", f"sqlite:///{prepared}/mlruns/mlflow.db"]
    for s in TINY + ["checkpoint_every=2"]:
        cmd += ["--set", s]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Somewhere mid-run: a fraction of a step after the checkpoint of step 2 or 4. Waiting for a
    # step, not a time, keeps the kill inside the run however fast the steps are (a fixed 0-1.5 s
    # after the first checkpoint let the whole run finish once steps got faster).
    target, deadline = random.choice([2, 4]), time.time() + 120
    while time.time() < deadline and not any(step_of(c) >= target for c in checkpoint_paths(run_dir)):
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.1))
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = load_latest(run_dir)["step"]
    assert killed_at < 8 or pytest.skip("the run finished before the kill landed")
    train_cli(prepared, run_dir, 8, "--tracking-uri", f"sqlite:///{prepared}/mlruns/mlflow.db")
    assert_identical(state(run_dir), straight)


def test_corrupt_newest_checkpoint_is_skipped(prepared, straight, capsys):
    run_dir = prepared / "straight"
    bad = run_dir / "checkpoints" / "step-99999999.pt"
    good = checkpoint_paths(run_dir)[0]
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a torn write
    try:
        assert load_latest(run_dir)["step"] == 8
        assert "skipping unreadable checkpoint step-99999999.pt" in capsys.readouterr().err
    finally:
        bad.unlink()


def test_checkpoint_contents_load_with_plain_torch_load(prepared, straight):
    s = torch.load(checkpoint_paths(prepared / "straight")[0], weights_only=True)
    assert {"G", "D_img", "D_vid", "G_ema", "opt_G", "opt_D", "step", "rng", "data_pos", "config"} <= s.keys()
    assert s["data_pos"] == 8 * s["config"]["d_steps"] and len(s["rng"]) == 1  # d_steps batches per step; one rank
    assert {"python", "numpy", "torch"} <= s["rng"][0].keys()


def test_two_gloo_ranks_stay_identical(prepared):
    r = train_cli(prepared, prepared / "ddp", 4, "--executor", "local", "--tasks-per-node", "2",
                  "--tracking-uri", f"sqlite:///{prepared}/mlruns/mlflow.db")
    assert "weights on 2 rank(s): identical" in r.stdout
    assert "MLflow run id on 2 rank(s): the same" in r.stdout  # broadcast from rank 0 (mlflow#11782)
    s = torch.load(checkpoint_paths(prepared / "ddp")[0], weights_only=True)
    assert len(s["rng"]) == 2 and not torch.equal(s["rng"][0]["torch"], s["rng"][1]["torch"])


def test_rank_slices_are_disjoint_and_resumable():
    a = RankBatches(50, 4, 0, 2, seed=1)
    b = RankBatches(50, 4, 1, 2, seed=1)
    ia, ib = iter(a), iter(b)
    first = [next(ia) for _ in range(6)], [next(ib) for _ in range(6)]  # one epoch: 25 // 4 = 6 batches
    assert not set(sum(first[0], [])) & set(sum(first[1], []))
    later = iter(RankBatches(50, 4, 0, 2, seed=1, start=3))
    assert [next(later) for _ in range(3)] == first[0][3:]


def _start_long_run(prepared, run_dir, at_step: int, *extra):
    """A 400-step local training run in the background, returned once its log shows step
    ``at_step``, with its controller's pid (the local job id; training runs in its children)."""
    cmd = [T2V, "train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
           "--preset", "debug_cpu", "--max-steps", "400", "--tracking-uri", f"sqlite:///{prepared}/mlruns/mlflow.db",
           *extra]
    for s in TINY + ["checkpoint_every=1000"]:
        cmd += ["--set", s]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = run_dir / "logs"
    deadline = time.time() + 120
    while time.time() < deadline:
        errs = sorted(logs.glob("*_0_log.err")) if logs.exists() else []
        if errs and f"step {at_step}/" in errs[0].read_text():
            break
        time.sleep(0.1)
    return p, int(errs[0].name.split("_")[0])


def test_preemption_signal_checkpoints_then_the_same_command_resumes(prepared):
    run_dir = prepared / "preempt"
    p, controller = _start_long_run(prepared, run_dir, 3)
    (task,) = _children(controller)
    os.kill(task, preempt_signal())  # submitit's: SIGUSR2
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "training preempted at step" in out
    step = load_latest(run_dir)["step"]
    assert 3 <= step < 400
    c = MlflowClient(f"sqlite:///{prepared}/mlruns/mlflow.db")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert c.get_run(run_id).info.status == "RUNNING"  # preempted: it comes back
    r = train_cli(prepared, run_dir, step + 2, "--tracking-uri", f"sqlite:///{prepared}/mlruns/mlflow.db")
    assert f"training finished at step {step + 2}" in r.stdout
    assert c.get_run(run_id).info.status == "FINISHED"


def test_a_crash_is_failed_in_mlflow_not_finished(prepared, monkeypatch):
    from pipeline import train

    calls = []

    def boom(self, next_batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug at step 2")
        return real_step(self, next_batch)

    real_step = train.GAN.step
    monkeypatch.setattr(train.GAN, "step", boom)
    run_dir = prepared / "crash"
    with pytest.raises(RuntimeError, match="a bug at step 2"):
        run(cfg(prepared, run_dir, 5))
    c = MlflowClient(f"sqlite:///{prepared}/mlruns/mlflow.db")
    assert c.get_run((run_dir / "mlflow_run_id").read_text().strip()).info.status == "FAILED"


def test_a_cancelled_run_is_killed_in_mlflow_after_a_checkpoint(prepared):
    run_dir = prepared / "cancel"
    uri = f"sqlite:///{prepared}/mlruns/mlflow.db"
    p, controller = _start_long_run(prepared, run_dir, 2)
    (task,) = _children(controller)
    os.kill(task, signal.SIGTERM)  # what scancel sends
    out, err = p.communicate(timeout=120)
    step = load_latest(run_dir)["step"]
    assert f"training cancelled at step {step}" in out, out + err
    c = MlflowClient(uri)
    assert c.get_run((run_dir / "mlflow_run_id").read_text().strip()).info.status == "KILLED"


def test_signal_to_one_of_two_ranks_stops_both_at_one_step(prepared):
    """After the process group is up, the preemption signal reaches the handler, and a signal to
    rank 1 alone (submitit only checkpoints on rank 0, submitit#9) still stops every rank at the
    same step: rank 0 writes the checkpoint, both exit, nobody waits in a collective."""
    run_dir = prepared / "preempt2"
    p, controller = _start_long_run(prepared, run_dir, 3, "--executor", "local", "--tasks-per-node", "2")
    ranks = _children(controller)
    assert len(ranks) == 2
    rank1 = next(pid for pid in ranks if "SUBMITIT_LOCAL_GLOBALID=1\0" in open(f"/proc/{pid}/environ").read())
    os.kill(rank1, preempt_signal())
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "training preempted at step" in out and "weights on 2 rank(s): identical" in out
    step = load_latest(run_dir)["step"]
    assert f"training preempted at step {step}" in out and 3 <= step < 400


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def test_mlflow_run_is_complete_and_resume_logs_into_it(prepared, mlflow_server):
    run_dir = prepared / "tracked"
    train_cli(prepared, run_dir, 4, "--tracking-uri", mlflow_server, "--experiment", "t2v-test")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    train_cli(prepared, run_dir, 6, "--tracking-uri", mlflow_server, "--experiment", "t2v-test")
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    c = MlflowClient(mlflow_server)
    r = c.get_run(run_id)
    assert r.data.params["lr_g"] == "0.002" and r.data.params["batch"] == "4" and r.data.params["loss"] == "hinge"
    assert r.data.tags["world_size"] == "1" and r.data.tags["git_commit"]
    assert r.info.status == "FINISHED"
    for key in ("loss_G", "loss_D", "gp_img", "gp_vid", "d_real", "d_fake", "samples_per_s", "data_wait_share"):
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, 7)), (key, steps)  # every step once, none twice
    arts = {a.path for a in c.list_artifacts(run_id, "clips")} | {a.path for a in c.list_artifacts(run_id, "model")}
    assert {"clips/step_000006.gif", "clips/step_000006.mp4", "clips/prompts.json", "model/generator.pt"} <= arts
    assert any(a.path.endswith(".pt") for a in c.list_artifacts(run_id, "checkpoints"))


def test_training_carries_on_when_mlflow_is_down(prepared):
    r = train_cli(prepared, prepared / "offline", 3, "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert "training finished at step 3" in r.stdout
    log = next((prepared / "offline" / "logs").glob("*_0_log.err")).read_text()
    assert "MLflow unavailable" in log and load_latest(prepared / "offline")["step"] == 3


# Levers that need a `parts` vocab (the fixture's is object mode: no head word / modifier split).
WORD_PART_LEVERS = {"factor_views": "d_img_views=factor", "mod_blocks": "g_mod_blocks=0",
                    "gru_head": "g_gru_head=true"}


@pytest.mark.parametrize("case", ["unknown_key", "bad_type", "size", "vocab_ids", *WORD_PART_LEVERS, "layered_mod_blocks",
                                  "run_dir"])
def test_bad_config_is_refused_before_any_work(prepared, straight, toy, tmp_path, case):
    extra, data, vocab = [], prepared / "frames", prepared / "vocab"
    if case == "unknown_key":
        extra, msg = ["--set", "lr=1"], "unknown key"
    elif case == "bad_type":
        extra, msg = ["--set", "batch=four"], "expected int"
    elif case == "size":
        extra, msg = ["--set", "size=64"], "hold 16 frames of 32px"
    elif case == "vocab_ids":
        t2v("vocab", "--labels", toy / "labels/validation.json", "--out", tmp_path / "v", "--epoch", "1")
        vocab, msg = tmp_path / "v", "have no condition"
    elif case == "layered_mod_blocks":  # debug_cpu paints the object as a layer: no block sees the colour
        t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "v", "--mode", "parts", "--epoch", "1")
        vocab, extra, msg = tmp_path / "v", ["--set", "g_mod_blocks=0"], "add --set g_layered=false to try it"
    elif case in WORD_PART_LEVERS:
        extra, msg = ["--set", WORD_PART_LEVERS[case]], "build " + str(vocab) + " with `t2v vocab --mode parts`"
    else:
        run_dir = prepared / "straight"
        extra, msg = ["--set", "g_ch=8"], "holds a run with another config: g_ch=4 (now 8); use a new --run-dir, " \
            "or resume it with --set g_ch=4"
    run_dir = prepared / "straight" if case == "run_dir" else tmp_path / "run"
    r = t2v("train", "--data", data, "--vocab", vocab, "--run-dir", run_dir, "--preset", "debug_cpu",
            *sum((["--set", s] for s in TINY), []), *extra, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    if case != "run_dir":
        assert not run_dir.exists()


def test_a_run_saved_before_a_key_existed_is_resumed_with_that_keys_old_default(prepared, straight, tmp_path):
    """debug_cpu turned g_layered on in session 26: a run saved before the key existed was drawn
    without it, and the refusal says how to resume it so (not "g_layered=None")."""
    import json
    import shutil

    run_dir = tmp_path / "older"
    shutil.copytree(prepared / "straight", run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved.pop("g_layered") is True  # the preset's value now
    (run_dir / "config.json").write_text(json.dumps(saved))
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
            "--preset", "debug_cpu", *sum((["--set", s] for s in TINY), []), check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "g_layered=False (now True)" in r.stderr and "--set g_layered=False" in r.stderr


def test_status_of_a_run_dir_prints_a_working_resume_command(prepared):
    import json
    import shlex

    run_dir = prepared / "a status run"  # a space: the printed command must quote its paths
    run(cfg(prepared, run_dir, 3))
    out = t2v("status", run_dir).stdout
    assert "done, newest checkpoint step 3 of 3" in out
    assert f"latest clips  {run_dir / 'clips' / 'step_000003.gif'}" in out  # where the picture is
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert f"/runs/{run_id}?workflowType=machine_learning after `mlflow ui --backend-store-uri sqlite:///" in out
    c = json.loads((run_dir / "config.json").read_text())
    c["max_steps"] = 5  # as if the job had died before step 5
    (run_dir / "config.json").write_text(json.dumps(c))
    r = t2v("status", run_dir, check=False)
    assert r.returncode == 1 and "not done, newest checkpoint step 3 of 5" in r.stdout
    cmd = shlex.split(r.stdout.strip().splitlines()[-1])
    assert cmd[0] == "t2v"
    out = t2v(*cmd[1:])
    assert "training finished at step 5" in out.stdout


def test_status_resumes_a_run_whose_config_predates_a_key(prepared):
    """A config.json written before d_vid_pool existed (debug_cpu's 2 since session 18) is a
    run with 1: status's resume command says so, and that command resumes it."""
    import json
    import shlex

    run_dir = prepared / "old_status"
    run(cfg(prepared, run_dir, 3, "d_vid_pool=1"))
    c = json.loads((run_dir / "config.json").read_text())
    del c["d_vid_pool"]
    c["max_steps"] = 5
    (run_dir / "config.json").write_text(json.dumps(c))
    r = t2v("status", run_dir, check=False)
    cmd = shlex.split(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 1 and cmd[0] == "t2v" and "d_vid_pool=1" in cmd, r.stdout
    assert "training finished at step 5" in t2v(*cmd[1:]).stdout


def test_resume_with_a_larger_max_steps_tags_the_change_and_big_files_become_tags(prepared):
    """mlflow#7046: a changed param can't be logged again, so it becomes a tag. mlflow#7564: a
    checkpoint above max_artifact_mb is recorded by path and hash, not uploaded."""
    import hashlib

    uri = f"sqlite:///{prepared}/mlruns/mlflow.db"
    run_dir = prepared / "grow"
    run(cfg(prepared, run_dir, 2))
    r = run(cfg(prepared, run_dir, 4, "max_artifact_mb=0.001"))
    assert r["status"] == "finished" and r["step"] == 4
    c = MlflowClient(uri)
    got = c.get_run(r["mlflow_run_id"]).data
    assert got.params["max_steps"] == "2" and got.tags["t2v.resumed.max_steps"] == "2 -> 4"
    assert got.tags["t2v.resumed.max_artifact_mb"] == "512.0 -> 0.001"
    ckpt = checkpoint_paths(run_dir)[0]
    key = f"t2v.artifact.checkpoints.{ckpt.name}"
    assert got.tags[f"{key}.path"] == str(ckpt) and got.tags[f"{key}.bytes"] == str(ckpt.stat().st_size)
    assert got.tags[f"{key}.sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    uploaded = {a.path for a in c.list_artifacts(r["mlflow_run_id"], "checkpoints")}
    assert f"checkpoints/{ckpt.name}" not in uploaded


def test_the_time_convolution_is_a_conv3d_with_the_same_weights_and_gradients():
    torch.manual_seed(0)
    fast = TimeConv(6, 5)
    ref = torch.nn.Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0))
    ref.load_state_dict(fast.state_dict())  # the same keys and shapes: old checkpoints load
    x = torch.randn(2, 6, 7, 4, 3, requires_grad=True)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xs = x.detach().contiguous(memory_format=layout).requires_grad_(True)
        y_fast, y_ref = fast(xs), ref(x)
        assert torch.allclose(y_fast, y_ref, atol=1e-5)
        g_fast = torch.autograd.grad(y_fast.square().sum(), (xs, fast.weight))
        g_ref = torch.autograd.grad(y_ref.square().sum(), (x, ref.weight))
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_fast, g_ref))
    # The (2+1)D generator's state_dict keys are the ones a plain Conv3d pair gave.
    keys = set(Generator(10, z_dim=4, ch=2, frames=4, gru_dim=8, factorized=True).state_dict())
    assert "blocks.0.c1.1.weight" in keys and "blocks.0.c1.1.bias" in keys


@pytest.mark.parametrize("frame_blocks", [1, 2])
def test_frame_blocks_draw_each_frame_from_that_frames_coarse_features_alone(frame_blocks):
    """With g_frame_blocks=N, what goes into the last N up-blocks reaches the output only in
    its own frame (no time conv after that point), while a 3D block still mixes frames."""
    torch.manual_seed(0)
    G = Generator(10, z_dim=4, ch=2, frames=6, gru_dim=8, parts=(4, 3, 3), factorized=True,
                  frame_blocks=frame_blocks).eval()
    first_frame_block = G.blocks[len(G.blocks) - frame_blocks]
    seen = {}

    def poke(_m, args):  # frame 2 of the first per-frame block's input, changed on the second pass
        x = args[0].clone()
        if seen.setdefault("calls", 0):
            x[:, :, 2] += 1.0
        seen["calls"] += 1
        return (x, *args[1:])

    handle = first_frame_block.register_forward_pre_hook(poke)
    cond, noise = torch.randn(2, 10), G.noise(2, "cpu")
    with torch.no_grad():
        base, poked = G(cond, noise), G(cond, noise)
    handle.remove()
    changed = (poked - base).abs().amax((0, 1, 3, 4)) > 1e-6  # per frame
    assert changed.tolist() == [i == 2 for i in range(6)]
    # The same poke before a 3D block spreads to the neighbouring frames.
    G3 = Generator(10, z_dim=4, ch=2, frames=6, gru_dim=8, parts=(4, 3, 3), factorized=True).eval()
    seen.clear()
    handle = G3.blocks[len(G3.blocks) - frame_blocks].register_forward_pre_hook(poke)
    with torch.no_grad():
        changed3 = (G3(cond, noise) - G3(cond, noise)).abs().amax((0, 1, 3, 4)) > 1e-6
    handle.remove()
    assert changed3[1] and changed3[3]
