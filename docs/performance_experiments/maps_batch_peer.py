"""All predictor maps at batch 64 and 128, tfvae against the PyTorch peer (issue 35's option of a larger
map batch): per kernel class, 3 interleaved rounds (a tfvae process, then a peer process, each timing
both batch sizes, median of 7 calls after 2 warm-up calls), slices/s."""
import json, os, statistics, subprocess, sys, time

BATCHES = (64, 128)
HERE = os.path.dirname(os.path.abspath(__file__))


def med(f, n=7):
    f(); f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def child(side: str) -> None:
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    import numpy as np
    out = {}
    if side == "tfvae":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tfvae  # noqa: F401  (oneDNN on)
        import keras
        from tfvae.maps.predictors import PixelPredictors
        from tfvae.model.vae import BetaVAE
        keras.utils.set_random_seed(0)
        pp = PixelPredictors(BetaVAE(image_size=64, latent_dim=64, seed=0))
        for b in BATCHES:
            x = np.random.default_rng(0).normal(size=(b, 64, 64, 1)).astype(np.float32)
            out[b] = b / med(lambda: pp(x))
    else:
        from tfvae.studies.benchmark_peer import Peer
        for b in BATCHES:
            p = Peer(batch=b, size=64, latent=64, repeats=1, steps=1, projection_steps=1)
            out[b] = b / med(p.maps)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1])
        sys.exit()
    classes = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
    for name, extra in classes.items():
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
        env.update(extra)
        rounds = []
        for r in range(3):
            got = {}
            for side in ("tfvae", "peer"):
                done = subprocess.run([sys.executable, __file__, side], env=env, capture_output=True, text=True,
                                      check=True)
                got[side] = json.loads(done.stdout.strip().splitlines()[-1])
            rounds.append(got)
            print(f"{name} round {r}: " + "   ".join(
                f"batch {b}: tfvae {got['tfvae'][str(b)]:6.0f} peer {got['peer'][str(b)]:6.0f} "
                f"({got['tfvae'][str(b)] / got['peer'][str(b)]:.2f} x)" for b in BATCHES), flush=True)
        for b in BATCHES:
            t = statistics.median(g["tfvae"][str(b)] for g in rounds)
            p = statistics.median(g["peer"][str(b)] for g in rounds)
            ratios = [g["tfvae"][str(b)] / g["peer"][str(b)] for g in rounds]
            print(f"{name} batch {b}: tfvae {t:6.0f} slices/s, peer {p:6.0f}, ratio median "
                  f"{statistics.median(ratios):.2f} x (rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
