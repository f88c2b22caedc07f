//! Matrix expansion with GitHub Actions semantics.
//!
//! 1. The cartesian product of the axes, in declaration order (the first axis
//!    varies slowest).
//! 2. `exclude` removes every combination matching all of an entry's keys.
//! 3. Each `include` entry extends every remaining *original* combination
//!    whose axis values it does not contradict (its non-axis keys are added,
//!    overwriting earlier include-added values but never axis values); if it
//!    extends none, it is added as a new combination of its own.

use crate::spec::Matrix;

/// Maximum number of combinations a matrix may expand to.
pub const MAX_COMBINATIONS: usize = 256;

/// Upper bound on the raw cartesian product (before `exclude`), so that huge
/// products are rejected without being enumerated.
const MAX_PRODUCT: usize = 65_536;

/// One expanded combination: `(key, value)` pairs, axes first in declaration
/// order, then include-added keys.
pub type Combination = Vec<(String, String)>;

fn get<'c>(combo: &'c Combination, key: &str) -> Option<&'c str> {
    combo.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Matrix {
    /// The keys usable as `matrix.<key>`: the axes, then keys added by
    /// `include` entries.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.axes.iter().map(|(k, _)| k.clone()).collect();
        for (k, _) in self.include.iter().flatten() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        keys
    }

    fn is_axis(&self, key: &str) -> bool {
        self.axes.iter().any(|(k, _)| k == key)
    }

    /// Expands the matrix into its combinations.
    pub fn expand(&self) -> Result<Vec<Combination>, String> {
        let product = self
            .axes
            .iter()
            .try_fold(1usize, |acc, (_, values)| acc.checked_mul(values.len()))
            .filter(|p| *p <= MAX_PRODUCT);
        let Some(product) = product else {
            return Err(format!(
                "the matrix has too many combinations (more than {MAX_PRODUCT} before `exclude`); the limit is {MAX_COMBINATIONS}"
            ));
        };
        let mut combos: Vec<Combination> = Vec::new();
        if !self.axes.is_empty() && product > 0 {
            combos.push(Vec::new());
            for (axis, values) in &self.axes {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut next = c.clone();
                            next.push((axis.clone(), v.clone()));
                            next
                        })
                    })
                    .collect();
            }
        }
        combos.retain(|c| !self.exclude.iter().any(|ex| ex.iter().all(|(k, v)| get(c, k) == Some(v.as_str()))));
        let originals = combos.len();
        for entry in &self.include {
            let mut extended = false;
            for combo in combos.iter_mut().take(originals) {
                let compatible = entry.iter().all(|(k, v)| !self.is_axis(k) || get(combo, k) == Some(v.as_str()));
                if !compatible {
                    continue;
                }
                extended = true;
                for (k, v) in entry.iter().filter(|(k, _)| !self.is_axis(k)) {
                    match combo.iter_mut().find(|(ck, _)| ck == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => combo.push((k.clone(), v.clone())),
                    }
                }
            }
            if !extended {
                combos.push(entry.clone());
            }
        }
        if combos.is_empty() {
            return Err("the matrix expands to no combinations".to_owned());
        }
        if combos.len() > MAX_COMBINATIONS {
            return Err(format!(
                "the matrix expands to {} combinations; the limit is {MAX_COMBINATIONS}",
                combos.len()
            ));
        }
        Ok(combos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;

    fn pairs(p: &[(&str, &str)]) -> Combination {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn matrix(axes: &[(&str, &[&str])], include: &[&[(&str, &str)]], exclude: &[&[(&str, &str)]]) -> Matrix {
        Matrix {
            axes: axes.iter().map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect())).collect(),
            include: include.iter().map(|p| pairs(p)).collect(),
            exclude: exclude.iter().map(|p| pairs(p)).collect(),
            pos: Pos::START,
        }
    }

    #[test]
    fn github_include_example() {
        let m = matrix(
            &[("fruit", &["apple", "pear"]), ("animal", &["cat", "dog"])],
            &[
                &[("color", "green")],
                &[("color", "pink"), ("animal", "cat")],
                &[("fruit", "apple"), ("shape", "circle")],
                &[("fruit", "banana")],
                &[("fruit", "banana"), ("animal", "cat")],
            ],
            &[],
        );
        let got = m.expand().unwrap();
        assert_eq!(
            got,
            vec![
                pairs(&[("fruit", "apple"), ("animal", "cat"), ("color", "pink"), ("shape", "circle")]),
                pairs(&[("fruit", "apple"), ("animal", "dog"), ("color", "green"), ("shape", "circle")]),
                pairs(&[("fruit", "pear"), ("animal", "cat"), ("color", "pink")]),
                pairs(&[("fruit", "pear"), ("animal", "dog"), ("color", "green")]),
                pairs(&[("fruit", "banana")]),
                pairs(&[("fruit", "banana"), ("animal", "cat")]),
            ]
        );
        assert_eq!(m.keys(), ["fruit", "animal", "color", "shape"]);
    }

    #[test]
    fn exclude_then_include() {
        let m = matrix(
            &[("toolchain", &["stable", "beta"]), ("os", &["linux", "mac"])],
            &[&[("toolchain", "nightly"), ("os", "linux")]],
            &[&[("toolchain", "beta"), ("os", "mac")], &[("os", "linux"), ("toolchain", "stable")]],
        );
        assert_eq!(
            m.expand().unwrap(),
            vec![
                pairs(&[("toolchain", "stable"), ("os", "mac")]),
                pairs(&[("toolchain", "beta"), ("os", "linux")]),
                pairs(&[("toolchain", "nightly"), ("os", "linux")]),
            ]
        );
    }

    #[test]
    fn include_only_and_limits() {
        let m = matrix(&[], &[&[("a", "1")], &[("a", "2")]], &[]);
        assert_eq!(m.expand().unwrap().len(), 2);

        let all_excluded = matrix(&[("a", &["1"])], &[], &[&[("a", "1")]]);
        assert!(all_excluded.expand().unwrap_err().contains("no combinations"));

        let values: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let big = matrix(&[("a", &refs), ("b", &refs)], &[], &[]);
        assert!(big.expand().unwrap_err().contains("400 combinations; the limit is 256"));

        let huge = matrix(&[("a", &refs), ("b", &refs), ("c", &refs), ("d", &refs)], &[], &[]);
        assert!(huge.expand().unwrap_err().contains("too many combinations"));
    }
}
