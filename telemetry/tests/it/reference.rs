//! Building references from CSV and .npy, and their encoding.

use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use outpost_telemetry::{
    ColumnData, REFERENCE_DECODE_LIMIT, ReferenceError, ReferenceKind, ReferenceOptions,
    ReferenceProfile, Role, ValidRange,
};

fn csv_text() -> String {
    let mut csv = String::from("age,city,score\n");
    for i in 0..1_000 {
        let age = if i % 100 == 0 {
            "NA".to_owned()
        } else {
            (20 + i % 40).to_string()
        };
        let city = ["paris", "oslo", "rome", "lima"][i % 4];
        csv += &format!("{age},{city},{}\n", (i % 10) as f64 / 10.0);
    }
    csv
}

fn csv_options() -> ReferenceOptions {
    ReferenceOptions {
        categorical: vec!["city".into()],
        outputs: vec!["score".into()],
        max_vocabulary: 3,
        valid_ranges: vec![("age".into(), ValidRange::new(0.0, 120.0).unwrap())],
        ..Default::default()
    }
}

#[test]
fn csv_reference_has_equal_mass_bins_roles_and_capped_vocabulary() {
    let reference = ReferenceProfile::from_csv(csv_text().as_bytes(), &csv_options()).unwrap();
    let age = reference.column("age").unwrap();
    assert_eq!(age.role(), Role::Input);
    assert_eq!(age.completeness().missing, 10);
    let ReferenceKind::Numeric(numeric) = age.kind() else {
        panic!("age is numeric")
    };
    assert_eq!(numeric.edges().bins(), 10);
    let counts = numeric.counts();
    assert_eq!(counts.iter().sum::<u64>(), 990);
    // 40 integer ages (two of them thinned by the missing rows) in 10
    // equal-mass bins: about 99 values each, whole ages per bin.
    assert!(
        counts.iter().all(|&c| (70..=130).contains(&c)),
        "{counts:?}"
    );
    assert_eq!(numeric.kll().n(), 990);

    let city = reference.column("city").unwrap();
    let ReferenceKind::Categorical(categorical) = city.kind() else {
        panic!("city is categorical")
    };
    assert_eq!(categorical.vocabulary(), ["lima", "oslo", "paris"]);
    // Ties broken by name, the fourth category counts as `other`.
    assert_eq!(categorical.counts(), [250, 250, 250, 250]);
    assert_eq!(reference.column("score").unwrap().role(), Role::Output);
}

#[test]
fn csv_errors_name_the_cell() {
    let csv = "a,b\n1,2\n3,x\n";
    match ReferenceProfile::from_csv(csv.as_bytes(), &ReferenceOptions::default()) {
        Err(ReferenceError::NotANumber { column, row, text }) => {
            assert_eq!((column.as_str(), row, text.as_str()), ("b", 2, "x"));
        }
        other => panic!("expected NotANumber, got {other:?}"),
    }
    let ragged = "a,b\n1,2\n3\n";
    assert!(matches!(
        ReferenceProfile::from_csv(ragged.as_bytes(), &ReferenceOptions::default()),
        Err(ReferenceError::Csv(_))
    ));
    let options = ReferenceOptions {
        outputs: vec!["nope".into()],
        ..Default::default()
    };
    assert!(matches!(
        ReferenceProfile::from_csv("a\n1\n".as_bytes(), &options),
        Err(ReferenceError::UnknownColumn(_))
    ));
    assert!(matches!(
        ReferenceProfile::from_csv("a\n".as_bytes(), &ReferenceOptions::default()),
        Err(ReferenceError::NoData("rows"))
    ));
    let options = ReferenceOptions {
        bins: 1,
        ..Default::default()
    };
    assert!(matches!(
        ReferenceProfile::from_csv("a\n1\n".as_bytes(), &options),
        Err(ReferenceError::Option(_))
    ));
}

#[test]
fn npy_reference_matches_the_same_data_given_in_memory() {
    let rows = 500;
    let array = Array2::from_shape_fn((rows, 2), |(r, c)| ((r * 37 + c * 11) % 101) as f64);
    let names = vec!["u".to_owned(), "v".to_owned()];
    let in_memory = ReferenceProfile::from_columns(
        names
            .iter()
            .enumerate()
            .map(|(c, n)| {
                (
                    n.clone(),
                    ColumnData::Numeric(array.column(c).iter().map(|&v| Some(v)).collect()),
                )
            })
            .collect(),
        &ReferenceOptions::default(),
    )
    .unwrap();
    let mut f64_bytes = Vec::new();
    array.write_npy(&mut f64_bytes).unwrap();
    let mut f32_bytes = Vec::new();
    array.mapv(|v| v as f32).write_npy(&mut f32_bytes).unwrap();
    for bytes in [&f64_bytes, &f32_bytes] {
        let from_npy = ReferenceProfile::from_npy(
            bytes.as_slice(),
            &names,
            1 << 20,
            &ReferenceOptions::default(),
        )
        .unwrap();
        assert_eq!(from_npy.fingerprint(), in_memory.fingerprint());
        assert_eq!(from_npy.columns()[1].bins(), in_memory.columns()[1].bins());
    }
    assert!(matches!(
        ReferenceProfile::from_npy(
            f64_bytes.as_slice(),
            &names[..1],
            1 << 20,
            &ReferenceOptions::default()
        ),
        Err(ReferenceError::NamesMismatch { names: 1, width: 2 })
    ));
    assert!(matches!(
        ReferenceProfile::from_npy(
            f64_bytes.as_slice(),
            &names,
            100,
            &ReferenceOptions::default()
        ),
        Err(ReferenceError::Npy(_))
    ));
}

#[test]
fn npy_header_claiming_a_huge_array_is_rejected_before_allocating() {
    let mut bytes = Vec::new();
    Array2::<f64>::zeros((2, 2)).write_npy(&mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    // Same header length: (2, 2) → (999999999999, 2) would change it, so
    // patch within the padding by rewriting the whole header line.
    let start = text.find("(2, 2)").unwrap();
    let mut hostile = bytes.clone();
    let huge = b"(9999999999999, 2)";
    hostile.splice(start..start + 6, huge.iter().copied());
    // Drop as many padding spaces as were added to keep the declared length.
    let newline = hostile.iter().position(|&b| b == b'\n').unwrap();
    hostile.drain(newline - (huge.len() - 6)..newline);
    let names = vec!["a".to_owned(), "b".to_owned()];
    let result = ReferenceProfile::from_npy(
        hostile.as_slice(),
        &names,
        1 << 20,
        &ReferenceOptions::default(),
    );
    assert!(matches!(result, Err(ReferenceError::Npy(_))), "{result:?}");
}

#[test]
fn reference_bytes_round_trip_and_reject_damage() {
    let reference = ReferenceProfile::from_csv(csv_text().as_bytes(), &csv_options()).unwrap();
    let bytes = reference.to_bytes();
    let decoded = ReferenceProfile::from_bytes(&bytes, REFERENCE_DECODE_LIMIT).unwrap();
    assert_eq!(decoded, reference);
    assert_eq!(decoded.fingerprint(), reference.fingerprint());
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(ReferenceProfile::from_bytes(&bytes[..cut], REFERENCE_DECODE_LIMIT).is_err());
    }
    // A different edge is a different fingerprint.
    let other = ReferenceOptions {
        bins: 5,
        ..csv_options()
    };
    let other = ReferenceProfile::from_csv(csv_text().as_bytes(), &other).unwrap();
    assert_ne!(other.fingerprint(), reference.fingerprint());
}
