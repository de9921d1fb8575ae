//! Unconstrained minimisation of a smooth function of a few variables with its
//! gradient: BFGS with a backtracking line search while the value still falls
//! measurably, then Newton steps on a Hessian differenced from the gradient, which
//! converge quadratically where the value's rounding no longer shows progress.
//!
//! For many variables, [`lbfgs`]: limited-memory BFGS, which keeps ten correction pairs
//! in place of the inverse Hessian.

/// Where a minimisation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    pub point: Vec<f64>,
    pub value: f64,
    /// The largest absolute gradient component at `point`.
    pub gradient: f64,
    pub iterations: u32,
}

const MAX_ITERATIONS: u32 = 1000;
/// BFGS hands over to Newton below this gradient.
const HAND_OVER: f64 = 1e-6;
/// Newton stops below this gradient, or when a step no longer moves the point.
const TOLERANCE: f64 = 1e-12;

/// Minimises `f`, which returns the value at a point and writes the gradient into its
/// second argument, from `start`.
pub fn minimize(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, start: &[f64]) -> Minimum {
    let n = start.len();
    let mut x = start.to_vec();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut h = identity(n);
    let mut iterations = 0;
    let (mut x_new, mut g_new) = (vec![0.0; n], vec![0.0; n]);
    while iterations < MAX_ITERATIONS && max_abs(&g) > HAND_OVER && fx.is_finite() {
        iterations += 1;
        let mut d: Vec<f64> = (0..n).map(|i| -dot(&h[i], &g)).collect();
        if dot(&d, &g) >= 0.0 {
            h = identity(n);
            d = g.iter().map(|v| -v).collect();
        }
        let slope = dot(&d, &g);
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            for i in 0..n {
                x_new[i] = x[i] + step * d[i];
            }
            let f_new = f(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= fx + 1e-4 * step * slope {
                fx = f_new;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break; // the value's rounding hides further progress: Newton takes over
        }
        let s: Vec<f64> = d.iter().map(|v| v * step).collect();
        let y: Vec<f64> = (0..n).map(|i| g_new[i] - g[i]).collect();
        let sy = dot(&s, &y);
        if sy > 1e-300 {
            if iterations == 1 {
                let scale = sy / dot(&y, &y);
                h = identity(n)
                    .into_iter()
                    .map(|row| row.into_iter().map(|v| v * scale).collect())
                    .collect();
            }
            bfgs_update(&mut h, &s, &y, sy);
        }
        x.clone_from(&x_new);
        g.clone_from(&g_new);
    }
    // Newton's polish.
    let mut g_probe = vec![0.0; n];
    for _ in 0..50 {
        if max_abs(&g) <= TOLERANCE || iterations >= MAX_ITERATIONS {
            break;
        }
        iterations += 1;
        let mut hessian = vec![vec![0.0; n]; n];
        for j in 0..n {
            let e = 1e-5 * x[j].abs().max(1.0);
            let mut probe = x.clone();
            probe[j] += e;
            f(&probe, &mut g_probe);
            let upper = g_probe.clone();
            probe[j] = x[j] - e;
            f(&probe, &mut g_probe);
            for i in 0..n {
                hessian[i][j] = (upper[i] - g_probe[i]) / (2.0 * e);
            }
        }
        let Some(step) = solve(hessian, g.iter().map(|v| -v).collect()) else {
            break;
        };
        let candidate: Vec<f64> = (0..n).map(|i| x[i] + step[i]).collect();
        let f_new = f(&candidate, &mut g_new);
        // Take the step while it lowers the gradient: near the minimum the value
        // cannot tell.
        if !f_new.is_finite() || max_abs(&g_new) >= max_abs(&g) {
            break;
        }
        x = candidate;
        fx = f_new;
        g.clone_from(&g_new);
        if max_abs(&step) <= 1e-14 {
            break;
        }
    }
    Minimum {
        gradient: max_abs(&g),
        point: x,
        value: fx,
        iterations,
    }
}

fn identity(n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, with ρ = 1 / (sᵀy).
fn bfgs_update(h: &mut [Vec<f64>], s: &[f64], y: &[f64], sy: f64) {
    let n = s.len();
    let rho = 1.0 / sy;
    let hy: Vec<f64> = (0..n).map(|i| dot(&h[i], y)).collect();
    let yhy = dot(y, &hy);
    for i in 0..n {
        for j in 0..n {
            h[i][j] += -rho * (hy[i] * s[j] + s[i] * hy[j]) + (rho * rho * yhy + rho) * s[i] * s[j];
        }
    }
}

/// Solves A x = b by Gaussian elimination with partial pivoting; `None` when A is
/// singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (offset, row) in lower.iter_mut().enumerate() {
            let factor = row[col] / pivot_row[col];
            for (value, above) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * above;
            }
            b[col + 1 + offset] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// L-BFGS stops when no gradient component is larger.
const LBFGS_TOLERANCE: f64 = 1e-11;
const LBFGS_MAX_ITERATIONS: u32 = 10_000;

/// Minimises a smooth convex `f` (value, gradient written into its second argument)
/// by L-BFGS with ten correction pairs and a backtracking (Armijo) line search.
/// Returns the point, the iterations and the largest absolute gradient component.
pub fn lbfgs(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, mut x: Vec<f64>) -> (Vec<f64>, u32, f64) {
    const MEMORY: usize = 10;
    let dim = x.len();
    let mut g = vec![0.0; dim];
    let mut fx = f(&x, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::with_capacity(MEMORY);
    let (mut x_new, mut g_new) = (vec![0.0; dim], vec![0.0; dim]);
    let mut iterations = 0;
    while iterations < LBFGS_MAX_ITERATIONS && max_abs(&g) > LBFGS_TOLERANCE {
        iterations += 1;
        // Two-loop recursion: d = −H g.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &d);
            d.iter_mut().zip(y).for_each(|(d, y)| *d -= a * y);
            alphas.push(a);
        }
        let scale = pairs
            .back()
            .map_or(1.0 / max_abs(&g).max(1.0), |(_, y, rho)| 1.0 / (rho * dot(y, y)));
        d.iter_mut().for_each(|d| *d *= scale);
        for ((s, y, rho), a) in pairs.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &d);
            d.iter_mut().zip(s).for_each(|(d, s)| *d += (a - b) * s);
        }
        let slope = dot(&d, &g);
        if slope >= 0.0 {
            pairs.clear();
            continue;
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            x_new
                .iter_mut()
                .zip(&x)
                .zip(&d)
                .for_each(|((xn, x), d)| *xn = x + step * d);
            let f_new = f(&x_new, &mut g_new);
            // Near the minimum the decrease falls below the value's rounding: a step
            // that leaves the value level within rounding and shrinks the slope along
            // the direction (Wolfe's curvature condition) is taken on the gradient's word.
            let level = f_new - fx <= 1e-12 * fx.abs().max(1.0) && dot(&g_new, &d).abs() <= 0.9 * slope.abs();
            if f_new.is_finite() && (f_new <= fx + 1e-4 * step * slope || level) {
                fx = f_new;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 0.0 {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
    }
    let gradient = max_abs(&g);
    (x, iterations, gradient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrocks_valley_is_found() {
        let found = minimize(
            |p, g| {
                let (x, y) = (p[0], p[1]);
                g[0] = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
                g[1] = 200.0 * (y - x * x);
                (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
            },
            &[-1.2, 1.0],
        );
        assert!((found.point[0] - 1.0).abs() < 1e-9, "{found:?}");
        assert!((found.point[1] - 1.0).abs() < 1e-9, "{found:?}");
    }
}
