//! The state files written by deployex must stay readable by later versions:
//! `tests/data/storage-format-1/` holds files in format 1 as committed when
//! the format was introduced. Never edit them; add a new folder per format.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use deployex_actors::model::{DeploymentKind, Mode};
use deployex_actors::storage::Storage;

#[test]
fn format_1_sample_still_parses() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/storage-format-1");
    let tmp = tempfile::tempdir().unwrap();
    for name in ["history.json", "ghosted.json", "mode.json"] {
        std::fs::copy(sample.join(name), tmp.path().join(name)).unwrap();
    }
    let (storage, state, errors) = Storage::open(tmp.path());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(state.history.len(), 3);
    assert_eq!(state.history[0].version, "0.1.2");
    assert_eq!(state.history[0].deployment, DeploymentKind::HotUpgrade);
    assert_eq!(state.history[1].deployment, DeploymentKind::Rollback);
    assert_eq!(state.history[2].deployment, DeploymentKind::FullDeployment);
    assert_eq!(state.history[2].deploy_ref, "5be01f9a");
    assert_eq!(state.ghosted, vec!["0.1.3"]);
    assert_eq!(
        state.mode,
        Mode::Manual {
            version: "0.1.1".into()
        }
    );

    // Writing the same state back produces files that read back equal.
    storage.save_history(&state.history).unwrap();
    storage.save_ghosted(&state.ghosted).unwrap();
    storage.save_mode(&state.mode).unwrap();
    let (_s, again, errors) = Storage::open(tmp.path());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(again, state);
}
