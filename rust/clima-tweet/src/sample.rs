//! The sample tweets load tools send (`clima load`; ci/locustfile.py reads the
//! same `sample.txt`).

use std::sync::LazyLock;

/// Countries and, per weather, descriptions to draw tweets from.
#[derive(Debug)]
pub struct Sample {
    /// ISO 3166-1 alpha-2 codes, in the file's order.
    pub countries: Vec<&'static str>,
    /// (weather, its descriptions), in the file's order.
    pub weathers: Vec<(&'static str, Vec<&'static str>)>,
}

/// The sample of `sample.txt`.
pub static SAMPLE: LazyLock<Sample> = LazyLock::new(|| parse(include_str!("sample.txt")));

fn parse(text: &'static str) -> Sample {
    let mut sample = Sample { countries: Vec::new(), weathers: Vec::new() };
    for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (key, values) = line.split_once('\t').expect("sample.txt: a key, a tab, the values");
        let values: Vec<_> = values.split('|').collect();
        match key {
            "countries" => sample.countries = values,
            weather => sample.weathers.push((weather, values)),
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use clima_proto::v1::TweetInput;

    use super::SAMPLE;

    /// Every tweet the sample can make is one the API accepts.
    #[test]
    fn every_sample_tweet_is_valid() {
        assert!(SAMPLE.countries.len() >= 10 && SAMPLE.weathers.len() == 3, "{:?}", *SAMPLE);
        for country in &SAMPLE.countries {
            for (weather, descriptions) in &SAMPLE.weathers {
                for description in descriptions {
                    let input = TweetInput {
                        description: (*description).to_owned(),
                        country: (*country).to_owned(),
                        weather: (*weather).to_owned(),
                    };
                    crate::validate_input(input).unwrap_or_else(|error| panic!("{country} {weather}: {error}"));
                }
            }
        }
    }
}
