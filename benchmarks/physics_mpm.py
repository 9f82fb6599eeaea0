"""MPM benchmark: physics.mpm (torch) against taichi's MLS-MPM on the CPU, same algorithm and sizes.

Scene: N particles (8k, 32k) of a fixed-corotated elastic solid (E = 1e5 Pa, nu = 0.3, 1000 kg/m^3) filling
a 0.3 m box above the floor, on a 64^3 grid over a 1 m domain, gravity, slip floor with Coulomb friction 0.5
and slip walls; substep dt = 1e-4 s. The taichi kernel below is written for this benchmark and follows
physics.mpm step by step (quadratic B-splines, MLS-MPM P2G with the fixed-corotated Kirchhoff stress, the
same boundary conditions, APIC G2P); the only difference is R from ti.svd instead of a polar iteration.
Both run on the CPU with 2 threads and fp32; ours runs under torch.no_grad(). After timing, both have done
the same substeps from the same state and the table reports how far their particles ended up apart.

A second table reports dataset-style throughput of physics.mpm alone: B scenes of 2048 particles on a 32^3
grid simulated for 1 s with automatic CFL substeps, as simulated clips per second.

Run: .venv/bin/python benchmarks/physics_mpm.py [--steps 50] [--no-clips]
Requires the bench extra: .venv/bin/pip install taichi==1.7.4
"""

import os

# libgomp's default wait policy spins idle threads, which on a shared machine steals the cores from the
# threads doing the work (a 1M-element op measured 16 ms instead of 0.2 ms under load); sleep instead. Must
# be set before torch loads OpenMP. taichi uses its own thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from physics.mpm import Materials, MPMConfig, MPMSolver  # noqa: E402

GRID, E, NU, RHO, DT, MU_FLOOR = 64, 1e5, 0.3, 1000.0, 1e-4, 0.5  # cells, Pa, -, kg/m^3, s, -
THREADS = 2


def initial_positions(n: int, generator: torch.Generator) -> torch.Tensor:
    """[1, n, 3] uniform in a 0.3 m box centred at (0, 0, 0.25) (m)."""
    return torch.rand(1, n, 3, generator=generator) * 0.3 + torch.tensor([-0.15, -0.15, 0.1])


def time_ours(x: torch.Tensor, steps: int) -> tuple[float, float, torch.Tensor, MPMSolver]:
    """(wall s/step, process-CPU s/step, final positions [N, 3], solver)."""
    sim = MPMSolver(MPMConfig(grid_res=GRID, floor="slip", floor_friction=MU_FLOOR))
    state = sim.init_state(x, Materials.create(1, x.shape[1], E=E, nu=NU, density=RHO))
    with torch.no_grad():
        for _ in range(3):  # warm-up (buffers, caches), not timed
            state = sim.step(state, DT, substeps=1)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state = sim.step(state, DT, substeps=1)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps, state.x[0], sim


def time_taichi(x: torch.Tensor, steps: int, sim: MPMSolver) -> tuple[float, float, torch.Tensor]:
    """The same substeps in a taichi kernel (imported lazily: taichi is a bench-only dependency)."""
    import taichi as ti

    ti.init(
        arch=ti.cpu, cpu_max_num_threads=THREADS, default_fp=ti.f32, offline_cache=True, log_level=ti.ERROR
    )
    cfg = sim.config
    n, R, dx = x.shape[1], cfg.grid_res, cfg.dx
    inv_dx, nb = 1.0 / dx, cfg.boundary_cells
    floor_layers = int(torch.floor(torch.tensor((cfg.floor_height - cfg.origin[2]) / dx - 0.5)).item()) + 1
    mu0, la0 = E / (2 * (1 + NU)), E * NU / ((1 + NU) * (1 - 2 * NU))
    vol = (0.5 * dx) ** 3
    mass = vol * RHO
    gz = cfg.gravity[2]

    xp = ti.Vector.field(3, ti.f32, n)
    vp = ti.Vector.field(3, ti.f32, n)
    Cp = ti.Matrix.field(3, 3, ti.f32, n)
    Fp = ti.Matrix.field(3, 3, ti.f32, n)
    gv = ti.Vector.field(3, ti.f32, (R, R, R))  # indexed (x, y, z)
    gm = ti.field(ti.f32, (R, R, R))

    @ti.kernel
    def substep(dt: ti.f32):
        for I in ti.grouped(gm):
            gv[I] = ti.Vector.zero(ti.f32, 3)
            gm[I] = 0.0
        for p in xp:  # P2G
            base = (xp[p] * inv_dx - 0.5).cast(int)
            fx = xp[p] * inv_dx - base.cast(ti.f32)
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
            U, _, V = ti.svd(Fp[p])
            J = Fp[p].determinant()
            tau = 2 * mu0 * (Fp[p] - U @ V.transpose()) @ Fp[p].transpose()
            tau += ti.Matrix.identity(ti.f32, 3) * la0 * J * (J - 1)
            affine = -dt * vol * 4 * inv_dx * inv_dx * tau + mass * Cp[p]
            for i, j, k in ti.static(ti.ndrange(3, 3, 3)):
                offset = ti.Vector([i, j, k])
                dpos = (offset.cast(ti.f32) - fx) * dx
                weight = w[i][0] * w[j][1] * w[k][2]
                gv[base + offset] += weight * (mass * vp[p] + affine @ dpos)
                gm[base + offset] += weight * mass
        for I in ti.grouped(gm):  # grid update: velocity, gravity, floor, walls
            v = gv[I] / (gm[I] + 1e-30)
            v[2] += dt * gz
            if I[2] < floor_layers:
                if v[2] < 0:
                    vt = ti.sqrt(v[0] ** 2 + v[1] ** 2 + 1e-30)
                    scale = ti.max(1 + MU_FLOOR * v[2] / vt, 0.0)
                    v[0] *= scale
                    v[1] *= scale
                    v[2] = 0.0
            for d in ti.static(range(3)):
                if I[d] < nb and v[d] < 0:
                    v[d] = 0.0
                if I[d] >= R - nb and v[d] > 0:
                    v[d] = 0.0
            gv[I] = v
        for p in xp:  # G2P
            base = (xp[p] * inv_dx - 0.5).cast(int)
            fx = xp[p] * inv_dx - base.cast(ti.f32)
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
            new_v = ti.Vector.zero(ti.f32, 3)
            new_C = ti.Matrix.zero(ti.f32, 3, 3)
            for i, j, k in ti.static(ti.ndrange(3, 3, 3)):
                offset = ti.Vector([i, j, k])
                weight = w[i][0] * w[j][1] * w[k][2]
                g = gv[base + offset]
                new_v += weight * g
                new_C += 4 * inv_dx * weight * g.outer_product(offset.cast(ti.f32) - fx)
            vp[p], Cp[p] = new_v, new_C
            xp[p] += dt * new_v
            Fp[p] = (ti.Matrix.identity(ti.f32, 3) + dt * new_C) @ Fp[p]

    origin = torch.tensor(cfg.origin)
    xp.from_torch((x[0] - origin).contiguous())
    vp.from_torch(torch.zeros(n, 3))
    Cp.from_torch(torch.zeros(n, 3, 3))
    Fp.from_torch(torch.eye(3).repeat(n, 1, 1))
    for _ in range(3):  # the first call compiles the kernel
        substep(DT)
    ti.sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        substep(DT)
    ti.sync()
    timing = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    x_final = xp.to_torch() + origin
    ti.reset()
    return timing[0], timing[1], x_final


def clips_per_second(batch: int, E_scene: float) -> tuple[float, int]:
    """Dataset-style throughput of physics.mpm: (simulated 1 s clips per second, substeps per clip)."""
    gen = torch.Generator().manual_seed(1)
    sim = MPMSolver(MPMConfig(grid_res=32))
    x = torch.rand(batch, 2048, 3, generator=gen) * 0.25 + torch.tensor([-0.125, -0.125, 0.05])
    state = sim.init_state(x, Materials.create(batch, 2048, E=E_scene), volume=0.25**3 / 2048)
    wall = time.perf_counter()
    substeps = 0
    with torch.no_grad():
        for _ in range(16):  # 17 frames at 16 fps, about 1 s
            substeps += sim.plan(state, 1 / 16)[1]
            state = sim.step(state, 1 / 16)
    return batch / (time.perf_counter() - wall), substeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed substeps per run")
    parser.add_argument("--no-clips", action="store_true", help="skip the dataset-throughput table")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(
        f"MLS-MPM, elastic, {GRID}^3 grid, dt = {DT} s, CPU, {THREADS} threads, fp32, {args.steps} substeps"
    )
    header = (
        "| particles | ours steps/s | taichi steps/s | ours / taichi steps/s | ours CPU ms/step "
        "| taichi CPU ms/step "
        "| max abs(x_ours - x_taichi) (m) |"
    )
    print(header)
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (8192, 32768):
        x = initial_positions(n, torch.Generator().manual_seed(0))
        ours_wall, ours_cpu, ours_x, sim = time_ours(x, args.steps)
        ti_wall, ti_cpu, ti_x = time_taichi(x, args.steps, sim)
        gap = float((ours_x - ti_x).abs().max())
        print(
            f"| {n} | {1 / ours_wall:.1f} | {1 / ti_wall:.1f} | {ti_wall / ours_wall:.2f} "
            f"| {ours_cpu * 1e3:.1f} "
            f"| {ti_cpu * 1e3:.1f} | {gap:.1e} |"
        )
    if args.no_clips:
        return
    print("\nphysics.mpm dataset throughput: B scenes x 2048 particles, 32^3 grid, 1 s (16 frames), auto dt")
    print("| B | E (Pa) | substeps per clip | clips/s |")
    print("|---:|---:|---:|---:|")
    for batch in (8, 32):
        for E_scene in (1e4, 1e5):
            rate, substeps = clips_per_second(batch, E_scene)
            print(f"| {batch} | {E_scene:.0e} | {substeps} | {rate:.2f} |")


if __name__ == "__main__":
    main()
