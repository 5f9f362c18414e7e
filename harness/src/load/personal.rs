//! Personal data the load plants in its requests: values generated from the
//! seed, one set per operation, that the harness remembers so that
//! `no_pii_leaked` can look for them everywhere the system writes. Each is a
//! value a redactor must recognise: an email address, a Luhn-valid card
//! number of a known issuer, and an SSN in a range that is issued.

use crate::seed;

const NAMES: [&str; 8] = [
    "ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken",
];
const DOMAINS: [&str; 4] = [
    "example.org",
    "example.net",
    "mail.example.com",
    "example.co.uk",
];

/// The values planted in operation `index` of a run under `seed`: an email
/// address, a card number (16 digits, no separators) and an SSN
/// (`AAA-GG-SSSS`).
pub fn planted(seed: u64, index: u64) -> [String; 3] {
    let draw =
        |label: &[u8], n: u64| seed::derive(seed, &[b"pii", label, &index.to_be_bytes()]) % n;
    let email = format!(
        "{}.{}{}@{}",
        NAMES[draw(b"name", NAMES.len() as u64) as usize],
        NAMES[draw(b"surname", NAMES.len() as u64) as usize],
        1000 + draw(b"number", 9000),
        DOMAINS[draw(b"domain", DOMAINS.len() as u64) as usize],
    );
    // A Visa number: 4, fourteen drawn digits, then the Luhn check digit.
    let mut digits = vec![4u8];
    for i in 0..14u8 {
        digits.push(u8::try_from(draw(&[b'c', i], 10)).unwrap_or(0));
    }
    digits.push(luhn_check_digit(&digits));
    let card: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
    // Areas 100 to 665 (000, 666 and 900 up are never issued), groups and
    // serials that are not zero.
    let ssn = format!(
        "{:03}-{:02}-{:04}",
        100 + draw(b"area", 566),
        10 + draw(b"group", 90),
        1000 + draw(b"serial", 9000)
    );
    [email, card, ssn]
}

/// The digit that makes `digits` followed by it pass the Luhn check.
fn luhn_check_digit(digits: &[u8]) -> u8 {
    // Walking from the right, the digit next to the check digit is doubled.
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    u8::try_from((10 - sum % 10) % 10).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn_valid(number: &str) -> bool {
        let sum: u32 = number
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let d = u32::from(b - b'0');
                if i % 2 == 1 {
                    let doubled = d * 2;
                    if doubled > 9 { doubled - 9 } else { doubled }
                } else {
                    d
                }
            })
            .sum();
        sum.is_multiple_of(10)
    }

    #[test]
    fn planted_values_are_valid_and_replay_by_seed() {
        assert!(luhn_valid("4111111111111111"), "the test's own check");
        for index in 0..200 {
            let [email, card, ssn] = planted(9, index);
            assert_eq!(
                planted(9, index),
                [email.clone(), card.clone(), ssn.clone()]
            );
            assert!(email.contains('@'), "{email}");
            assert_eq!(card.len(), 16);
            assert!(card.starts_with('4') && luhn_valid(&card), "{card}");
            let area: u32 = ssn[..3].parse().unwrap();
            assert!((100..=665).contains(&area), "{ssn}");
        }
        assert_ne!(planted(9, 0), planted(10, 0));
    }
}
