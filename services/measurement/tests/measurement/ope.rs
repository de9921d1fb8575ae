//! Off-policy estimates on the Open Bandit Dataset's sample (copied from the project's
//! shared reference data), against obp 0.5.7's reference values for the same files; and
//! logged decisions that cannot be used, refused with the field.

use std::path::PathBuf;

use corvus_measurement::ope::{self, files};

fn data(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/obd")
        .join(name)
}

#[test]
fn estimates_equal_obps_on_the_open_bandit_sample() {
    let rounds = files::logged(&files::read_text(&data("logged.csv")).unwrap()).unwrap();
    ope::check(&rounds).unwrap();
    let policy = files::policy(&files::read_text(&data("policy.csv")).unwrap()).unwrap();
    let rewards = files::rewards(&files::read_text(&data("rewards.csv.gz")).unwrap(), rounds.len()).unwrap();
    let got = ope::estimate(&rounds, &policy, Some(&rewards), 0.05);
    // obp 0.5.7 (the data's README): IPS, SNIPS, DM, DR of the candidate's click rate.
    let reference = [
        ("ipw", got.ipw.value, 0.00455288),
        ("snipw", got.snipw.value, 0.004775833081),
        ("dm", got.dm.unwrap().value, 0.003540046105),
        ("dr", got.dr.unwrap().value, 0.004838331237),
    ];
    for (name, value, want) in reference {
        assert!((value - want).abs() < 1e-9, "{name}: {value} against obp's {want}");
    }
    assert_eq!(got.rounds, 10_000);
    // The intervals hold the estimates and, for these, the on-policy truth (0.0042).
    for e in [got.ipw, got.snipw, got.dr.unwrap()] {
        assert!(e.ci[0] < 0.0042 && 0.0042 < e.ci[1], "{e:?}");
        assert!(e.ci[0] < e.value && e.value < e.ci[1], "{e:?}");
    }
    // The uniform logging policy and a concentrated candidate: far fewer effective rounds.
    assert!(got.effective_sample_size > 100.0 && got.effective_sample_size < 10_000.0);
    // Without a reward model, no DM or DR.
    let plain = ope::estimate(&rounds, &policy, None, 0.05);
    assert!(plain.dm.is_none() && plain.dr.is_none());
    assert_eq!(plain.ipw, got.ipw);
}

#[test]
fn unusable_logs_are_refused_with_the_field() {
    let logged = "round,action,position,reward,pscore\n0,1,0,1,0.5\n1,2,0,0,0\n";
    let rounds = files::logged(logged).unwrap();
    assert_eq!(ope::check(&rounds).unwrap_err().field, "logged[1].pscore");
    let above_one = files::logged("round,action,position,reward,pscore\n0,1,0,1,1.5\n").unwrap();
    assert_eq!(ope::check(&above_one).unwrap_err().field, "logged[0].pscore");
    let unnumbered = files::logged("round,action,position,reward,pscore\n3,1,0,1,0.5\n");
    assert_eq!(unnumbered.unwrap_err().field, "logged[0].round");
    let no_column = files::logged("round,action,reward,pscore\n0,1,1,0.5\n");
    assert_eq!(no_column.unwrap_err().field, "logged");
    let short = files::policy("action,position,probability\n0,0,0.5\n1,0,0.4\n");
    assert_eq!(short.unwrap_err().field, "policy");
    let negative = files::policy("action,position,probability\n0,0,1.5\n1,0,-0.5\n");
    assert_eq!(negative.unwrap_err().field, "policy[0].probability");
    let missing = files::rewards("round,action,q\n0,1,0.1\n", 2);
    assert_eq!(missing.unwrap_err().field, "rewards");
}
