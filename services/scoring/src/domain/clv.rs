//! Customer lifetime value: the BG/NBD model of repeat purchases (Fader, Hardie and Lee
//! 2005, "Counting your customers the easy way") and the Gamma–Gamma model of spend
//! (Fader, Hardie and Lee 2005, note 025), each fitted by maximum likelihood, with the
//! predictions `lifetimes` makes from them: P(alive), expected purchases over a
//! horizon, expected spend and a discounted lifetime value.
//!
//! A customer is summarised as of a date, in a time unit: `x` repeat purchases (days
//! with a purchase after the first), `t_x` the time from the first purchase to the last,
//! `t` the time from the first purchase to the date, and `m` the mean spend of the
//! repeat purchase days.

use super::optimize::{Minimum, minimize};
use super::special::{digamma, hyp2f1, ln_gamma};

/// One customer's purchase summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Customer {
    /// Repeat purchases.
    pub x: f64,
    /// Time of the last purchase, from the first.
    pub t_x: f64,
    /// Time from the first purchase to the end of observation.
    pub t: f64,
    /// Mean spend of the repeat purchases (0 without any).
    pub m: f64,
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("{model} needs at least {needed} {what}; the data holds {held}")]
    TooLittleData {
        model: &'static str,
        what: &'static str,
        needed: usize,
        held: usize,
    },
    #[error("{model}: the likelihood has no maximum the fit could find ({detail})")]
    NoConvergence { model: &'static str, detail: String },
}

/// The least data a fit is made from: below it the likelihood is too flat to say much.
pub const MIN_CUSTOMERS: usize = 20;
pub const MIN_REPEAT_BUYERS: usize = 10;

/// BG/NBD: purchases while alive follow a Poisson process whose rate is Gamma(r, α)
/// across customers; after each purchase a customer drops out with a probability that
/// is Beta(a, b) across customers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Gamma–Gamma: a customer's spend per purchase is Gamma(p, ν) with ν Gamma(q, γ)
/// across customers (`v` is γ, as `lifetimes` names it).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

/// A fitted model with what the fit found.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted<M> {
    pub model: M,
    /// The log-likelihood at the parameters, summed over the customers.
    pub log_likelihood: f64,
    /// Customers the model was fitted on.
    pub customers: usize,
    pub iterations: u32,
    /// The largest gradient component of the mean log-likelihood (in log parameters)
    /// at the end.
    pub gradient: f64,
}

impl BgNbd {
    fn from_log(p: &[f64]) -> Self {
        Self {
            r: p[0].exp(),
            alpha: p[1].exp(),
            a: p[2].exp(),
            b: p[3].exp(),
        }
    }

    /// One customer's log-likelihood and, when `grad` is given, its gradient in the
    /// log parameters added to `grad`.
    fn log_likelihood_of(&self, c: &Customer, grad: Option<&mut [f64]>) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let x = c.x;
        let ((lg_r, psi_r), (lg_b, psi_b), (lg_ab, psi_ab)) = (rising(r, x), rising(b, x), rising(a + b, x));
        let a1 = lg_r + r * alpha.ln();
        let a2 = lg_b - lg_ab;
        let a3 = -(r + x) * (alpha + c.t).ln();
        let (ll, w4) = if x > 0.0 {
            let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + c.t_x).ln();
            let top = a3.max(a4);
            let (e3, e4) = ((a3 - top).exp(), (a4 - top).exp());
            (a1 + a2 + top + (e3 + e4).ln(), e4 / (e3 + e4))
        } else {
            (a1 + a2 + a3, 0.0)
        };
        if let Some(g) = grad {
            let w3 = 1.0 - w4;
            let mut d_r = psi_r + alpha.ln() - w3 * (alpha + c.t).ln();
            let mut d_alpha = r / alpha - w3 * (r + x) / (alpha + c.t);
            let mut d_a = -psi_ab;
            let mut d_b = psi_b - psi_ab;
            if x > 0.0 {
                d_r -= w4 * (alpha + c.t_x).ln();
                d_alpha -= w4 * (r + x) / (alpha + c.t_x);
                d_a += w4 / a;
                d_b -= w4 / (b + x - 1.0);
            }
            g[0] += d_r * r;
            g[1] += d_alpha * alpha;
            g[2] += d_a * a;
            g[3] += d_b * b;
        }
        ll
    }

    /// The log-likelihood of the customers, summed.
    pub fn log_likelihood(&self, customers: &[Customer]) -> f64 {
        customers.iter().map(|c| self.log_likelihood_of(c, None)).sum()
    }

    /// The customers with the same history (`x`, `t_x`, `t`: all the likelihood depends
    /// on), each once with how many there are. Customers who bought once in the same
    /// week are many.
    fn grouped(customers: &[Customer]) -> Vec<(Customer, f64)> {
        let mut groups: std::collections::HashMap<[u64; 3], (Customer, f64)> = std::collections::HashMap::new();
        for c in customers {
            groups
                .entry([c.x.to_bits(), c.t_x.to_bits(), c.t.to_bits()])
                .or_insert((*c, 0.0))
                .1 += 1.0;
        }
        let mut grouped: Vec<(Customer, f64)> = groups.into_values().collect();
        // A fixed order, so that the sums (and the fit) are the same every time.
        grouped.sort_by(|(a, _), (b, _)| {
            a.x.total_cmp(&b.x)
                .then(a.t_x.total_cmp(&b.t_x))
                .then(a.t.total_cmp(&b.t))
        });
        grouped
    }

    /// The maximum-likelihood parameters for `customers`.
    pub fn fit(customers: &[Customer]) -> Result<Fitted<Self>, FitError> {
        let repeat = customers.iter().filter(|c| c.x > 0.0).count();
        check_size("BG/NBD", "customers", MIN_CUSTOMERS, customers.len())?;
        check_size("BG/NBD", "customers with a repeat purchase", MIN_REPEAT_BUYERS, repeat)?;
        let n = customers.len() as f64;
        let mean_t = customers.iter().map(|c| c.t).sum::<f64>() / n;
        let start = [0.0, mean_t.max(1e-3).ln(), 0.0, 0.0];
        let groups = Self::grouped(customers);
        let found = minimize(
            |p, g| {
                g.fill(0.0);
                let model = Self::from_log(p);
                let mut one = [0.0; 4];
                let mut ll = 0.0;
                for (c, weight) in &groups {
                    one.fill(0.0);
                    ll += weight * model.log_likelihood_of(c, Some(&mut one));
                    for (total, part) in g.iter_mut().zip(one) {
                        *total += weight * part;
                    }
                }
                g.iter_mut().for_each(|v| *v = -*v / n);
                -ll / n
            },
            &start,
        );
        fitted("BG/NBD", found, Self::from_log, customers.len(), n)
    }

    /// P(alive): the probability that a customer with this history has not dropped out.
    pub fn p_alive(&self, c: &Customer) -> f64 {
        if c.x == 0.0 {
            return 1.0;
        }
        1.0 / (1.0 + self.a / (self.b + c.x - 1.0) * ((self.alpha + c.t) / (self.alpha + c.t_x)).powf(self.r + c.x))
    }

    /// The expected number of purchases in the next `horizon` time units, given the
    /// customer's history.
    pub fn expected_purchases(&self, horizon: f64, c: &Customer) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let Self { r, alpha, a, b } = *self;
        let x = c.x;
        let (ha, hb, hc) = (r + x, b + x, a + b + x - 1.0);
        let z = horizon / (alpha + c.t + horizon);
        let mut ln_hyp = hyp2f1(ha, hb, hc, z).ln();
        if !ln_hyp.is_finite() {
            // Euler's transformation, as `lifetimes` falls back to.
            ln_hyp = hyp2f1(hc - ha, hc - hb, hc, z).ln() + (hc - ha - hb) * (1.0 - z).ln();
        }
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - (ln_hyp + (r + x) * ((alpha + c.t) / (alpha + horizon + c.t)).ln()).exp();
        let denominator = if x > 0.0 {
            1.0 + a / (b + x - 1.0) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + x)
        } else {
            1.0
        };
        first * second / denominator
    }
}

/// What every customer's Gamma–Gamma term shares.
struct GammaGammaTerms {
    ln_gamma_q: f64,
    digamma_q: f64,
    ln_v: f64,
}

impl GammaGammaTerms {
    fn of(model: &GammaGamma) -> Self {
        Self {
            ln_gamma_q: ln_gamma(model.q),
            digamma_q: digamma(model.q),
            ln_v: model.v.ln(),
        }
    }
}

impl GammaGamma {
    fn from_log(p: &[f64]) -> Self {
        Self {
            p: p[0].exp(),
            q: p[1].exp(),
            v: p[2].exp(),
        }
    }

    fn log_likelihood_of(&self, c: &Customer, grad: Option<&mut [f64]>) -> f64 {
        self.log_likelihood_with(&GammaGammaTerms::of(self), c, grad)
    }

    /// One customer's log-likelihood, with the terms that do not depend on the
    /// customer computed once per evaluation.
    fn log_likelihood_with(&self, terms: &GammaGammaTerms, c: &Customer, grad: Option<&mut [f64]>) -> f64 {
        let Self { p, q, v } = *self;
        let (x, m) = (c.x, c.m);
        let px = p * x;
        let (ln_m, ln_x, ln_xmv) = (m.ln(), x.ln(), (x * m + v).ln());
        let ll = ln_gamma(px + q) - ln_gamma(px) - terms.ln_gamma_q + q * terms.ln_v + (px - 1.0) * ln_m + px * ln_x
            - (px + q) * ln_xmv;
        if let Some(g) = grad {
            let psi = digamma(px + q);
            let d_p = x * (psi - digamma(px) + ln_m + ln_x - ln_xmv);
            let d_q = psi - terms.digamma_q + terms.ln_v - ln_xmv;
            let d_v = q / v - (px + q) / (x * m + v);
            g[0] += d_p * p;
            g[1] += d_q * q;
            g[2] += d_v * v;
        }
        ll
    }

    /// The log-likelihood of the repeat buyers among `customers`, summed.
    pub fn log_likelihood(&self, customers: &[Customer]) -> f64 {
        customers
            .iter()
            .filter(|c| spends(c))
            .map(|c| self.log_likelihood_of(c, None))
            .sum()
    }

    /// The maximum-likelihood parameters for the repeat buyers among `customers`
    /// (those with a repeat purchase and a positive mean spend).
    pub fn fit(customers: &[Customer]) -> Result<Fitted<Self>, FitError> {
        let buyers: Vec<Customer> = customers.iter().copied().filter(spends).collect();
        check_size(
            "Gamma–Gamma",
            "customers with a repeat purchase",
            MIN_REPEAT_BUYERS,
            buyers.len(),
        )?;
        let n = buyers.len() as f64;
        let mean_m = buyers.iter().map(|c| c.m).sum::<f64>() / n;
        let start = [0.0, 0.0, mean_m.ln()];
        let found = minimize(
            |params, g| {
                g.fill(0.0);
                let model = Self::from_log(params);
                let terms = GammaGammaTerms::of(&model);
                let ll: f64 = buyers
                    .iter()
                    .map(|c| model.log_likelihood_with(&terms, c, Some(g)))
                    .sum();
                g.iter_mut().for_each(|v| *v = -*v / n);
                -ll / n
            },
            &start,
        );
        fitted("Gamma–Gamma", found, Self::from_log, buyers.len(), n)
    }

    /// The expected mean spend of the customer's future purchases: their own mean,
    /// shrunk towards the population's by how few purchases it rests on.
    pub fn expected_spend(&self, c: &Customer) -> f64 {
        let Self { p, q, v } = *self;
        let individual = p * c.x / (p * c.x + q - 1.0);
        let population = v * p / (q - 1.0);
        (1.0 - individual) * population + individual * c.m
    }
}

/// (ln Γ(z + x) − ln Γ(z), ψ(z + x) − ψ(z)): for a whole `x` of at most 64 as the
/// sums of ln(z + k) and 1 / (z + k) over k < x, which is exact and much cheaper than
/// the functions; otherwise from them.
fn rising(z: f64, x: f64) -> (f64, f64) {
    if x.fract() == 0.0 && (0.0..=64.0).contains(&x) {
        let (mut ln, mut psi) = (0.0, 0.0);
        for k in 0..x as u32 {
            let v = z + f64::from(k);
            ln += v.ln();
            psi += 1.0 / v;
        }
        (ln, psi)
    } else {
        (ln_gamma(z + x) - ln_gamma(z), digamma(z + x) - digamma(z))
    }
}

fn spends(c: &Customer) -> bool {
    c.x > 0.0 && c.m > 0.0
}

fn check_size(model: &'static str, what: &'static str, needed: usize, held: usize) -> Result<(), FitError> {
    if held < needed {
        return Err(FitError::TooLittleData {
            model,
            what,
            needed,
            held,
        });
    }
    Ok(())
}

fn fitted<M>(
    model: &'static str,
    found: Minimum,
    build: impl Fn(&[f64]) -> M,
    customers: usize,
    n: f64,
) -> Result<Fitted<M>, FitError> {
    if !found.value.is_finite() || found.point.iter().any(|p| !p.is_finite()) || found.gradient > 1e-5 {
        return Err(FitError::NoConvergence {
            model,
            detail: format!(
                "after {} iterations the gradient is {:.3e}",
                found.iterations, found.gradient
            ),
        });
    }
    Ok(Fitted {
        model: build(&found.point),
        log_likelihood: -found.value * n,
        customers,
        iterations: found.iterations,
        gradient: found.gradient,
    })
}

/// The lifetime value over `months`, each month's expected purchases times the
/// expected spend, discounted at `monthly_discount` a month, as `lifetimes`'
/// `customer_lifetime_value` computes it; `factor` is the model's time units a month
/// (30 days, 4.345 weeks, 1 month, as `lifetimes` counts them).
pub fn lifetime_value(
    bg: &BgNbd,
    gg: &GammaGamma,
    c: &Customer,
    months: u32,
    monthly_discount: f64,
    factor: f64,
) -> f64 {
    let spend = gg.expected_spend(c);
    (1..=months)
        .map(|month| {
            let end = f64::from(month) * factor;
            let purchases = bg.expected_purchases(end, c) - bg.expected_purchases(end - factor, c);
            spend * purchases / (1.0 + monthly_discount).powf(end / factor)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CDNOW calibration summary (39 weeks to 1997-09-30) as the paper gives it.
    fn cdnow() -> Vec<Customer> {
        include_str!("../../tests/data/cdnow_summary.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
                Customer {
                    x: f[1],
                    t_x: f[2],
                    t: f[3],
                    m: f[4],
                }
            })
            .collect()
    }

    fn assert_close(what: &str, got: f64, expected: f64, tolerance: f64) {
        assert!(
            (got - expected).abs() <= tolerance,
            "{what}: {got} against {expected} (difference {:e})",
            got - expected
        );
    }

    /// The reference values of the paper, reproduced by `lifetimes` 0.11.3
    /// (../shared/data/README.md).
    #[test]
    fn bg_nbd_and_gamma_gamma_on_cdnow_equal_the_papers() {
        let customers = cdnow();
        let bg = BgNbd::fit(&customers).unwrap();
        assert_close("r", bg.model.r, 0.242593, 1e-4);
        assert_close("alpha", bg.model.alpha, 4.413532, 1e-4);
        assert_close("a", bg.model.a, 0.792886, 1e-4);
        assert_close("b", bg.model.b, 2.425752, 1e-4);
        assert_close("log-likelihood", bg.log_likelihood, -9582.4256, 1e-4);
        let first = customers[0];
        assert_close("P(alive) of customer 1", bg.model.p_alive(&first), 0.726609, 1e-4);
        assert_close(
            "purchases of customer 1 in 39 weeks",
            bg.model.expected_purchases(39.0, &first),
            1.225910,
            1e-4,
        );
        let gg = GammaGamma::fit(&customers).unwrap();
        assert_eq!(gg.customers, 946);
        assert_close("p", gg.model.p, 6.248802, 1e-4);
        assert_close("q", gg.model.q, 3.744588, 1e-4);
        assert_close("v", gg.model.v, 15.447748, 1e-4);
    }

    #[test]
    fn too_little_data_says_how_much_is_needed() {
        let few = vec![
            Customer {
                x: 1.0,
                t_x: 2.0,
                t: 5.0,
                m: 10.0
            };
            5
        ];
        let err = BgNbd::fit(&few).unwrap_err();
        assert_eq!(err.to_string(), "BG/NBD needs at least 20 customers; the data holds 5");
        assert!(GammaGamma::fit(&few).unwrap_err().to_string().contains("at least 10"));
    }
}
