//! Synthetic, realistic contacts for `seed`, benchmarks and tests.
//!
//! A [`Generator`] is seeded and deterministic: `contact(i)` depends only on
//! the seed and `i`, never on which other contacts were generated before or
//! on the clock. Every generated contact
//!
//! * has `contact_id` `c{index:09}` (unique, sorts in index order),
//! * fills every field plausibly (names from built-in lists, organization,
//!   category with a matching subcategory, a full `llm_context`,
//!   relationships pointing at lower-indexed generated contacts, 1–3 emails
//!   with exactly one primary and addresses unique per index, 0–2 E.164
//!   phones with one primary), leaves `external_ids` empty and `deleted_at`
//!   absent, sets `version` 1, `last_updated_by` `"seed"` and `content_hash`,
//! * is already normalized ([`Contact::normalize`] leaves it unchanged) and
//!   passes [`crate::validate::validate`],
//! * is about 2 KB of JSON (1–3 KB; 33 keys, a full `llm_context`).
//!
//! [`Generator::invalid_contact`] produces contacts with exactly one defect,
//! cycling through the rules of [`mod@crate::validate`], and says which field
//! `validate` reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::hash::content_hash;
use crate::model::{Contact, Email, Phone, Timestamp};
use crate::validate::MAX_NOTES_BYTES;

/// `created_at` of generated contacts is this instant plus an offset
/// (2020-01-01T00:00:00Z, as Unix seconds).
pub const BASE_UNIX_SECONDS: i64 = 1_577_836_800;

/// The defects [`Generator::invalid_contact`] cycles through (by
/// `index % INVALID_KINDS`).
pub const INVALID_KINDS: u64 = 8;

/// A seeded, deterministic source of synthetic contacts.
#[derive(Debug, Clone)]
pub struct Generator {
    seed: u64,
}

impl Generator {
    /// A generator whose output is a pure function of `seed` and the index.
    pub fn new(seed: u64) -> Self {
        Generator { seed }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The `contact_id` of the contact at `index`: `c` and nine digits.
    pub fn contact_id(index: u64) -> String {
        let mut s = String::with_capacity(12);
        s.push('c');
        push_padded(&mut s, index, 9);
        s
    }

    fn rng_for(&self, index: u64, salt: u64) -> SmallRng {
        SmallRng::seed_from_u64(splitmix64(splitmix64(self.seed ^ salt).wrapping_add(index)))
    }

    /// The realistic, valid contact at `index` (see the module docs).
    pub fn contact(&mut self, index: u64) -> Contact {
        let mut rng = self.rng_for(index, 0x5EED_C0DE);
        build(&mut rng, index)
    }

    /// A contact at `index` with exactly one defect, and the field name
    /// [`crate::validate::validate`] reports for it (after
    /// [`Contact::normalize`]). The defect is chosen by
    /// `index % INVALID_KINDS`: missing `canonical_name`, bad
    /// `category_code`, `subcategory_code` not under its category, bad email,
    /// bad phone, `llm_context.closeness_level` 11, oversize `notes`,
    /// `relationships` not a list.
    pub fn invalid_contact(&mut self, index: u64) -> (Contact, &'static str) {
        let mut c = self.contact(index);
        let field = match index % INVALID_KINDS {
            0 => {
                c.canonical_name = String::new();
                "canonical_name"
            }
            1 => {
                c.category_code = Some("Q".into());
                c.subcategory_code = Some("Q1".into());
                "category_code"
            }
            2 => {
                let cat = c.category_code.clone().unwrap_or_else(|| "B".into());
                c.category_code = Some(cat.clone());
                let other = if cat == "C" { "D2" } else { "C2" };
                c.subcategory_code = Some(other.into());
                "subcategory_code"
            }
            3 => {
                c.emails[0].address = "not-an-email".into();
                "emails"
            }
            4 => {
                let p = Phone {
                    number: "020 7123 4567".into(),
                    label: Some("home".into()),
                    is_primary: c.phones.is_empty(),
                };
                c.phones.push(p);
                "phones"
            }
            5 => {
                if let Some(Value::Object(m)) = &mut c.llm_context {
                    m.insert("closeness_level".into(), Value::from(11));
                }
                "llm_context.closeness_level"
            }
            6 => {
                let sentence = "Long rambling notes about everything. ";
                let mut notes = String::with_capacity(MAX_NOTES_BYTES + sentence.len());
                while notes.len() <= MAX_NOTES_BYTES {
                    notes.push_str(sentence);
                }
                c.notes = Some(notes.trim_end().to_string());
                "notes"
            }
            _ => {
                let mut m = Map::new();
                m.insert("contact_id".into(), Value::from(Self::contact_id(0)));
                c.relationships = Some(Value::Object(m));
                "relationships"
            }
        };
        c.normalize();
        c.content_hash = Some(content_hash(&c));
        (c, field)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// `n` distinct items (n ≤ items.len()), in list order.
fn pick_distinct(rng: &mut SmallRng, items: &[&'static str], n: usize) -> Vec<Value> {
    let n = n.min(items.len());
    let mut chosen = 0u64;
    let mut count = 0;
    while count < n {
        let i = rng.gen_range(0..items.len());
        if chosen & (1 << i) == 0 {
            chosen |= 1 << i;
            count += 1;
        }
    }
    (0..items.len())
        .filter(|i| chosen & (1 << i) != 0)
        .map(|i| Value::from(items[i]))
        .collect()
}

fn push_padded(s: &mut String, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = buf.len() - i;
    for _ in digits..width {
        s.push('0');
    }
    for &b in &buf[i..] {
        s.push(b as char);
    }
}

fn date_text(y: u64, m: u64, d: u64) -> String {
    let mut s = String::with_capacity(10);
    push_padded(&mut s, y, 4);
    s.push('-');
    push_padded(&mut s, m, 2);
    s.push('-');
    push_padded(&mut s, d, 2);
    s
}

fn random_date(rng: &mut SmallRng, years: std::ops::Range<u64>) -> String {
    date_text(
        rng.gen_range(years),
        rng.gen_range(1..=12),
        rng.gen_range(1..=28),
    )
}

fn obj<const N: usize>(entries: [(&'static str, Value); N]) -> Value {
    let mut m = Map::with_capacity(N);
    for (k, v) in entries {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

fn ts(seconds: i64) -> Timestamp {
    DateTime::<Utc>::from_timestamp(seconds, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Categories with their weight (out of 100), subcategory labels (index i →
/// subcategory `{code}{i+1}`) and closeness range.
struct Category {
    code: &'static str,
    weight: u32,
    labels: [&'static str; 4],
    closeness: (i64, i64),
}

const CATEGORY_TABLE: &[Category] = &[
    Category {
        code: "A",
        weight: 12,
        labels: ["Sibling", "Parent", "Cousin", "In-law"],
        closeness: (6, 10),
    },
    Category {
        code: "B",
        weight: 20,
        labels: [
            "Close friend",
            "College friend",
            "Childhood friend",
            "Friend from the running club",
        ],
        closeness: (5, 10),
    },
    Category {
        code: "C",
        weight: 18,
        labels: [
            "Neighbour",
            "Friend of a friend",
            "Gym acquaintance",
            "Met at a conference",
        ],
        closeness: (2, 5),
    },
    Category {
        code: "D",
        weight: 4,
        labels: ["Partner", "Dating", "First dates", "Long-distance partner"],
        closeness: (6, 10),
    },
    Category {
        code: "E",
        weight: 5,
        labels: [
            "Ex-partner",
            "Former spouse",
            "Ex from university",
            "Brief fling",
        ],
        closeness: (2, 6),
    },
    Category {
        code: "F",
        weight: 12,
        labels: ["Dentist", "Accountant", "Plumber", "Hairdresser"],
        closeness: (1, 4),
    },
    Category {
        code: "G",
        weight: 22,
        labels: ["Coworker", "Manager", "Mentor", "Client"],
        closeness: (3, 7),
    },
    Category {
        code: "H",
        weight: 3,
        labels: [
            "Difficult landlord",
            "Former business partner",
            "Litigious neighbour",
            "Online harasser",
        ],
        closeness: (1, 2),
    },
    Category {
        code: "X",
        weight: 4,
        labels: [
            "Spam caller",
            "Do not contact",
            "Duplicate import",
            "Unknown number",
        ],
        closeness: (1, 1),
    },
];

const SUBCATEGORIES: &[[&str; 4]] = &[
    ["A1", "A2", "A3", "A4"],
    ["B1", "B2", "B3", "B4"],
    ["C1", "C2", "C3", "C4"],
    ["D1", "D2", "D3", "D4"],
    ["E1", "E2", "E3", "E4"],
    ["F1", "F2", "F3", "F4"],
    ["G1", "G2", "G3", "G4"],
    ["H1", "H2", "H3", "H4"],
    ["X1", "X2", "X3", "X4"],
];

/// (first name, ASCII slug, nickname, phonetic)
const FIRST_NAMES: &[(&str, &str, &str, &str)] = &[
    ("Ada", "ada", "Addie", "AY-duh"),
    ("Alexander", "alexander", "Alex", "al-ig-ZAN-der"),
    ("Amara", "amara", "Mara", "ah-MAR-ah"),
    ("Anika", "anika", "Ani", "AH-nee-kah"),
    ("Beatriz", "beatriz", "Bia", "bay-ah-TREES"),
    ("Benjamin", "benjamin", "Ben", "BEN-juh-min"),
    ("Catherine", "catherine", "Kate", "KATH-rin"),
    ("Chidi", "chidi", "Chi", "CHEE-dee"),
    ("Daniel", "daniel", "Dan", "DAN-yul"),
    ("Dmitri", "dmitri", "Dima", "DMEE-tree"),
    ("Eleanor", "eleanor", "Nora", "EL-uh-nor"),
    ("Elif", "elif", "Eli", "eh-LEEF"),
    ("François", "francois", "Franck", "frahn-SWAH"),
    ("Gabriela", "gabriela", "Gabi", "gah-bree-EH-lah"),
    ("Hiroshi", "hiroshi", "Hiro", "hee-ROH-shee"),
    ("Ingrid", "ingrid", "Inge", "ING-grid"),
    ("Isabel", "isabel", "Isa", "IZ-uh-bel"),
    ("Jamal", "jamal", "Jay", "juh-MAHL"),
    ("Joaquín", "joaquin", "Quino", "hwah-KEEN"),
    ("Katarzyna", "katarzyna", "Kasia", "kah-tah-ZHIH-nah"),
    ("Liam", "liam", "Li", "LEE-um"),
    ("Lucía", "lucia", "Lu", "loo-SEE-ah"),
    ("Magnus", "magnus", "Mags", "MAG-nus"),
    ("Margaret", "margaret", "Maggie", "MAR-gret"),
    ("Mei", "mei", "Meimei", "MAY"),
    ("Mohammed", "mohammed", "Mo", "moh-HAM-ed"),
    ("Nadia", "nadia", "Nad", "NAH-dee-ah"),
    ("Niamh", "niamh", "Neevy", "NEEV"),
    ("Oluwaseun", "oluwaseun", "Seun", "oh-loo-wah-SHAY-oon"),
    ("Oscar", "oscar", "Ozzy", "OS-kar"),
    ("Priya", "priya", "Pri", "PREE-yah"),
    ("Rafael", "rafael", "Rafa", "rah-fah-EL"),
    ("Saoirse", "saoirse", "Seer", "SEER-sha"),
    ("Sebastian", "sebastian", "Seb", "seh-BAS-chun"),
    ("Siobhan", "siobhan", "Shiv", "shi-VAWN"),
    ("Sofia", "sofia", "Sofi", "soh-FEE-ah"),
    ("Thomas", "thomas", "Tom", "TOM-us"),
    ("Valentina", "valentina", "Vale", "vah-len-TEE-nah"),
    ("Wei", "wei", "Weiwei", "WAY"),
    ("Xavier", "xavier", "Xav", "ZAY-vee-er"),
    ("Yusuf", "yusuf", "Yus", "YOO-suf"),
    ("Zoë", "zoe", "Zo", "ZOH-ee"),
];

const MIDDLE_NAMES: &[&str] = &[
    "Marie",
    "James",
    "Rose",
    "Lee",
    "Anne",
    "Grace",
    "John",
    "Louise",
    "Ray",
    "Jean",
    "Kai",
    "Elizabeth",
    "Michael",
    "Noor",
    "Paul",
    "Sophia",
];

/// (last name, ASCII slug, phonetic)
const LAST_NAMES: &[(&str, &str, &str)] = &[
    ("Abara", "abara", "ah-BAH-rah"),
    ("Andersson", "andersson", "AN-der-son"),
    ("Bianchi", "bianchi", "bee-AHN-kee"),
    ("Brennan", "brennan", "BREN-un"),
    ("Chen", "chen", "CHEN"),
    ("Da Silva", "dasilva", "dah SIL-vah"),
    ("Dubois", "dubois", "doo-BWAH"),
    ("Eriksen", "eriksen", "AIR-ik-sen"),
    ("Fernández", "fernandez", "fer-NAN-dez"),
    ("Fitzgerald", "fitzgerald", "fits-JER-uld"),
    ("García", "garcia", "gar-SEE-ah"),
    ("Haddad", "haddad", "hah-DAHD"),
    ("Ivanova", "ivanova", "ee-vah-NOH-vah"),
    ("Jansen", "jansen", "YAHN-sen"),
    ("Kowalski", "kowalski", "koh-VAHL-skee"),
    ("Kim", "kim", "KIM"),
    ("Lindqvist", "lindqvist", "LIND-kvist"),
    ("MacLeod", "macleod", "muh-KLOWD"),
    ("Mbeki", "mbeki", "um-BEK-ee"),
    ("Müller", "muller", "MUE-ler"),
    ("Nakamura", "nakamura", "nah-kah-MOO-rah"),
    ("Novak", "novak", "NOH-vahk"),
    ("O'Connor", "oconnor", "oh-KON-er"),
    ("Okafor", "okafor", "oh-KAH-for"),
    ("Patel", "patel", "puh-TEL"),
    ("Petrov", "petrov", "peh-TROF"),
    ("Quinn", "quinn", "KWIN"),
    ("Rossi", "rossi", "ROS-ee"),
    ("Schmidt", "schmidt", "SHMIT"),
    ("Singh", "singh", "SING"),
    ("Tanaka", "tanaka", "tah-NAH-kah"),
    ("Thompson", "thompson", "TOMP-sun"),
    ("Usman", "usman", "OOS-mahn"),
    ("Van der Berg", "vanderberg", "fahn der BERKH"),
    ("Walsh", "walsh", "WOLSH"),
    ("Wójcik", "wojcik", "VOO-chik"),
    ("Yilmaz", "yilmaz", "yil-MAHZ"),
    ("Zhang", "zhang", "JAHNG"),
];

const PREFIXES: &[&str] = &["Dr.", "Mr.", "Ms.", "Mrs.", "Prof.", "Rev."];
const SUFFIXES: &[&str] = &["Jr.", "Sr.", "III", "PhD", "MD"];

/// (organization, email domain)
const ORGANIZATIONS: &[(&str, &str)] = &[
    ("Northwind Traders", "northwind.example"),
    ("Blue Harbor Health", "blueharbor.example"),
    ("Kestrel Robotics", "kestrel.example"),
    ("Meridian Bank", "meridianbank.example"),
    ("Oakridge School District", "oakridge.example"),
    ("Lumen Analytics", "lumen.example"),
    ("Granite & Pine Architects", "granitepine.example"),
    ("Saffron Kitchen", "saffron.example"),
    ("Atlas Logistics", "atlaslogistics.example"),
    ("Helios Energy", "helios.example"),
    ("Riverbend Dental", "riverbend.example"),
    ("Copperleaf Legal", "copperleaf.example"),
    ("Starling Media", "starling.example"),
    ("Tidewater University", "tidewater.example"),
    ("Vantage Consulting", "vantage.example"),
    ("City General Hospital", "citygeneral.example"),
];

/// (job title, department)
const JOBS: &[(&str, &str)] = &[
    ("Software Engineer", "Engineering"),
    ("Product Manager", "Product"),
    ("Nurse Practitioner", "Cardiology"),
    ("Account Executive", "Sales"),
    ("Teacher", "Mathematics"),
    ("Data Scientist", "Analytics"),
    ("Architect", "Design"),
    ("Head Chef", "Kitchen"),
    ("Operations Lead", "Operations"),
    ("Field Technician", "Maintenance"),
    ("Dentist", "Clinical"),
    ("Paralegal", "Litigation"),
    ("Editor", "Newsroom"),
    ("Research Fellow", "Biology"),
    ("Consultant", "Strategy"),
    ("Financial Analyst", "Finance"),
    ("HR Business Partner", "People"),
    ("Marketing Director", "Marketing"),
];

const PERSONAL_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example",
    "inbox.example",
];

const ARCS: &[&str] = &[
    "Met years ago and stayed in touch through several moves",
    "Grew closer after a difficult project together",
    "Drifted apart for a while, reconnected last year",
    "Steady, low-key connection that has lasted over a decade",
    "Started formal, became warmer over time",
    "Intense at first, now more distant but cordial",
    "Known since childhood, shared many family events",
    "Recent connection that is growing quickly",
];

const STYLES: &[&str] = &[
    "Prefers short texts and replies quickly",
    "Sends long voice notes, loves phone calls",
    "Formal emails, expects a reply within a day",
    "Direct and blunt, appreciates the same",
    "Warm and chatty, uses lots of emoji",
    "Reserved in writing, opens up in person",
    "Responds best to scheduled calls",
    "Sporadic but thoughtful long messages",
];

const PERSONALITIES: &[&str] = &[
    "Curious and generous, a bit disorganised",
    "Analytical with a dry sense of humour",
    "Energetic extrovert who hates being late",
    "Quiet, observant and very loyal",
    "Competitive but fair",
    "Anxious under pressure, calm otherwise",
    "Optimistic planner who loves lists",
    "Sensitive to criticism, quick to forgive",
];

const INTERESTS: &[&str] = &[
    "hiking",
    "jazz",
    "sourdough baking",
    "chess",
    "climbing",
    "photography",
    "gardening",
    "marathon running",
    "board games",
    "sci-fi novels",
    "woodworking",
    "cycling",
    "birdwatching",
    "poetry",
    "football",
    "yoga",
    "wine",
    "history podcasts",
    "sailing",
    "pottery",
];

/// (event, significance)
const EVENTS: &[(&str, &str)] = &[
    ("Birthday", "Always call in the morning"),
    ("Work anniversary", "Send a short note"),
    ("Wedding anniversary", "Celebrates with a dinner out"),
    ("Moved to a new city", "Big change, still settling in"),
    ("Graduation", "Proud milestone"),
    ("First child born", "Ask about the baby"),
    ("Started a new job", "Check how it is going"),
    ("Lost a parent", "Sensitive date, be gentle"),
];

const TOPICS: &[&str] = &[
    "travel plans",
    "their kids' schooling",
    "house renovation",
    "career change",
    "local politics",
    "new recipes",
    "fitness goals",
    "books we both read",
    "mutual friends",
    "holiday plans",
    "startup ideas",
    "their dog",
];

const HOW_MET: &[&str] = &[
    "At university",
    "Through a mutual friend",
    "At work",
    "At a wedding",
    "In the neighbourhood",
    "At a conference",
    "Online, through a hobby forum",
    "At a family gathering",
    "Through a service booking",
    "At the gym",
];

const CURRENT_STATES: &[&str] = &[
    "Doing well, busy with work",
    "Going through a tough time",
    "Just moved house",
    "Recently promoted",
    "On parental leave",
    "Travelling for a few months",
    "Recovering from an injury",
    "Starting a business",
];

const BLIND_SPOTS: &[&str] = &[
    "Overcommits and then cancels",
    "Misses when others are stressed",
    "Avoids difficult conversations",
    "Underestimates how long things take",
    "Takes jokes too far",
    "Forgets to follow up",
];

const STRENGTHS: &[&str] = &[
    "Great listener",
    "Reliable in a crisis",
    "Very funny",
    "Excellent cook",
    "Knows everyone in town",
    "Sharp negotiator",
    "Patient teacher",
    "Generous with time",
];

const TENSIONS: &[&str] = &[
    "Old disagreement about money",
    "Feels I don't call enough",
    "Political differences",
    "Competitive about careers",
    "Unresolved argument at a family event",
    "Different views on parenting",
];

const RELATIONS: &[&str] = &[
    "sibling",
    "spouse",
    "colleague",
    "friend",
    "manager",
    "neighbour",
    "cousin",
    "introduced by",
];

const RELATION_NOTES: &[&str] = &[
    "See each other at holidays",
    "Worked together for two years",
    "They introduced us",
    "Share a running group",
    "Not on speaking terms lately",
    "Live on the same street",
];

const TAGS: &[&str] = &[
    "family",
    "close",
    "work",
    "gym",
    "book-club",
    "neighbour",
    "vip",
    "follow-up",
    "holiday-card",
    "mentor",
    "investor",
    "school",
    "travel",
    "music",
];

const SOURCES: &[&str] = &[
    "google_contacts",
    "icloud",
    "linkedin_import",
    "manual",
    "twenty",
    "csv_import",
];

const NOTES: &[&str] = &[
    "Prefers to be contacted after 6pm.",
    "Allergic to peanuts, remember for dinners.",
    "Still has my copy of that novel.",
    "Borrowed the camping gear in spring.",
    "Mentioned wanting to change jobs.",
    "Has two kids and a very friendly dog.",
    "Great source of restaurant tips.",
    "Call before visiting, never drop by.",
    "Was very supportive during my move.",
    "Invoices are due at the end of the month.",
];

const CHANNELS: &[&str] = &["sms", "email", "phone", "whatsapp", "signal"];
const TIMEZONES: &[&str] = &[
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Africa/Lagos",
    "Australia/Sydney",
];
const LANGUAGES: &[&str] = &["en", "de", "fr", "es", "pt", "ja", "pl"];

fn build(rng: &mut SmallRng, index: u64) -> Contact {
    let (first, first_slug, nick, first_ph) = *pick(rng, FIRST_NAMES);
    let (last, last_slug, last_ph) = *pick(rng, LAST_NAMES);
    let middle = if rng.gen_ratio(7, 10) {
        Some(*pick(rng, MIDDLE_NAMES))
    } else {
        None
    };
    let prefix = if rng.gen_ratio(15, 100) {
        Some(*pick(rng, PREFIXES))
    } else {
        None
    };
    let suffix = if rng.gen_ratio(8, 100) {
        Some(*pick(rng, SUFFIXES))
    } else {
        None
    };

    let mut canonical = String::with_capacity(first.len() + last.len() + 8);
    canonical.push_str(first);
    canonical.push(' ');
    canonical.push_str(last);
    if let Some(s) = suffix {
        canonical.push_str(", ");
        canonical.push_str(s);
    }
    let display = match (prefix, rng.gen_range(0..3)) {
        (Some(p), _) => [p, " ", first, " ", last].concat(),
        (None, 0) => [nick, " ", last].concat(),
        (None, 1) => [
            first,
            " ",
            &last[..last.chars().next().map_or(0, char::len_utf8)],
            ".",
        ]
        .concat(),
        _ => canonical.clone(),
    };

    // Category.
    let mut roll = rng.gen_range(0..100u32);
    let mut cat_index = 0;
    for (i, cat) in CATEGORY_TABLE.iter().enumerate() {
        if roll < cat.weight {
            cat_index = i;
            break;
        }
        roll -= cat.weight;
    }
    let cat = &CATEGORY_TABLE[cat_index];
    let sub_index = rng.gen_range(0..4);
    let closeness = rng.gen_range(cat.closeness.0..=cat.closeness.1);
    let depth = (closeness + rng.gen_range(-2..=2)).clamp(1, 10);

    let (org, org_domain) = *pick(rng, ORGANIZATIONS);
    let (job, dept) = *pick(rng, JOBS);

    // Emails: 1–3, the first primary; every address carries the index, so
    // addresses are unique per index.
    let mut idx = String::with_capacity(10);
    push_padded(&mut idx, index, 1);
    let n_emails = match rng.gen_range(0..10) {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    let mut emails = Vec::with_capacity(n_emails);
    emails.push(Email {
        address: [
            first_slug,
            ".",
            last_slug,
            ".",
            &idx,
            "@",
            *pick(rng, PERSONAL_DOMAINS),
        ]
        .concat(),
        label: Some("personal".into()),
        is_primary: true,
    });
    if n_emails > 1 {
        emails.push(Email {
            address: [first_slug, &idx, "@", org_domain].concat(),
            label: Some("work".into()),
            is_primary: false,
        });
    }
    if n_emails > 2 {
        emails.push(Email {
            address: [last_slug, ".", &idx, "@alumni.example.edu"].concat(),
            label: Some("other".into()),
            is_primary: false,
        });
    }

    // Phones: 0–2, the first primary. Digits are a bijection of the index
    // (mod 10^7 / 10^9), so numbers rarely repeat.
    let n_phones = rng.gen_range(0..3);
    let mut phones = Vec::with_capacity(n_phones);
    if n_phones > 0 {
        let mut n = String::with_capacity(13);
        n.push_str("+1");
        push_padded(&mut n, 200 + (index / 10_000_000) % 800, 3);
        push_padded(
            &mut n,
            (index % 10_000_000)
                .wrapping_mul(7_654_321)
                .wrapping_add(1_234_567)
                % 10_000_000,
            7,
        );
        phones.push(Phone {
            number: n,
            label: Some("mobile".into()),
            is_primary: true,
        });
    }
    if n_phones > 1 {
        let mut n = String::with_capacity(14);
        n.push_str("+447");
        push_padded(
            &mut n,
            (index % 1_000_000_000)
                .wrapping_mul(123_456_791)
                .wrapping_add(98_765)
                % 1_000_000_000,
            9,
        );
        phones.push(Phone {
            number: n,
            label: Some(if rng.gen_bool(0.5) { "home" } else { "work" }.into()),
            is_primary: false,
        });
    }

    // llm_context with every documented key.
    let mut dates = Vec::with_capacity(2);
    let (ev, sig) = *pick(rng, EVENTS);
    dates.push(obj([
        ("date", Value::from(random_date(rng, 1960..2005))),
        ("event", Value::from("Birthday")),
        ("significance", Value::from("Always call in the morning")),
    ]));
    if ev != "Birthday" && rng.gen_ratio(3, 10) {
        dates.push(obj([
            ("date", Value::from(random_date(rng, 2010..2026))),
            ("event", Value::from(ev)),
            ("significance", Value::from(sig)),
        ]));
    }
    let n_interests = rng.gen_range(2..=3);
    let n_topics = 2;
    let n_blind = 1;
    let n_strengths = rng.gen_range(1..=2);
    let n_tensions = 1;
    let llm_context = obj([
        ("relationship_arc", Value::from(*pick(rng, ARCS))),
        ("communication_style", Value::from(*pick(rng, STYLES))),
        (
            "key_interests",
            Value::Array(pick_distinct(rng, INTERESTS, n_interests)),
        ),
        ("personality_notes", Value::from(*pick(rng, PERSONALITIES))),
        ("important_dates", Value::Array(dates)),
        (
            "conversation_topics",
            Value::Array(pick_distinct(rng, TOPICS, n_topics)),
        ),
        ("emotional_depth", Value::from(depth)),
        ("closeness_level", Value::from(closeness)),
        ("how_met", Value::from(*pick(rng, HOW_MET))),
        ("current_state", Value::from(*pick(rng, CURRENT_STATES))),
        (
            "blind_spots",
            Value::Array(pick_distinct(rng, BLIND_SPOTS, n_blind)),
        ),
        (
            "strengths",
            Value::Array(pick_distinct(rng, STRENGTHS, n_strengths)),
        ),
        (
            "tensions",
            Value::Array(pick_distinct(rng, TENSIONS, n_tensions)),
        ),
    ]);

    // Relationships to distinct lower-indexed contacts (none for index 0).
    let n_rel = match (index, rng.gen_range(0..10)) {
        (0, _) | (_, 0..=2) => 0,
        (_, 3..=7) => 1,
        _ => 2,
    };
    let mut rels = Vec::with_capacity(n_rel);
    let mut last_target = u64::MAX;
    for _ in 0..n_rel {
        let target = index - 1 - rng.gen_range(0..index.min(1000));
        if target == last_target {
            continue;
        }
        last_target = target;
        rels.push(obj([
            ("contact_id", Value::from(Generator::contact_id(target))),
            ("relation", Value::from(*pick(rng, RELATIONS))),
            ("notes", Value::from(*pick(rng, RELATION_NOTES))),
        ]));
    }

    let communication_stats = obj([
        ("messages_90d", Value::from(rng.gen_range(0..400u32))),
        ("calls_90d", Value::from(rng.gen_range(0..40u32))),
        ("last_contact", Value::from(random_date(rng, 2023..2026))),
        ("preferred_channel", Value::from(*pick(rng, CHANNELS))),
    ]);
    let mut profiles = Map::with_capacity(2);
    profiles.insert(
        "linkedin".to_string(),
        Value::from(
            [
                "https://www.linkedin.com/in/",
                first_slug,
                "-",
                last_slug,
                "-",
                &idx,
            ]
            .concat(),
        ),
    );
    if rng.gen_ratio(3, 10) {
        profiles.insert(
            "instagram".to_string(),
            Value::from(["@", first_slug, "_", last_slug, &idx].concat()),
        );
    }
    let social_profiles = Value::Object(profiles);
    let custom_attributes = obj([
        ("timezone", Value::from(*pick(rng, TIMEZONES))),
        ("language", Value::from(*pick(rng, LANGUAGES))),
        ("birthday_reminder", Value::from(rng.gen_bool(0.6))),
    ]);

    let n_tags = rng.gen_range(1..=3);
    let tags = pick_distinct(rng, TAGS, n_tags)
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect();
    let first_note = rng.gen_range(0..NOTES.len());
    let notes = if rng.gen_bool(0.5) {
        NOTES[first_note].to_string()
    } else {
        let second = (first_note + rng.gen_range(1..NOTES.len())) % NOTES.len();
        [NOTES[first_note], " ", NOTES[second]].concat()
    };

    let created = BASE_UNIX_SECONDS
        + ((index.wrapping_mul(7_919) % (5 * 365 * 86_400)) as i64)
        + rng.gen_range(0..86_400);
    let created_at = ts(created);
    let last_updated = created_at + Duration::seconds(rng.gen_range(0..400 * 86_400));

    let mut c = Contact {
        contact_id: Generator::contact_id(index),
        external_ids: BTreeMap::new(),
        canonical_name: canonical,
        display_name: Some(display),
        first_name: Some(first.into()),
        middle_name: middle.map(Into::into),
        last_name: Some(last.into()),
        name_prefix: prefix.map(Into::into),
        name_suffix: suffix.map(Into::into),
        nickname: Some(nick.into()),
        phonetic_name: Some([first_ph, " ", last_ph].concat()),
        organization: Some(org.into()),
        job_title: Some(job.into()),
        department: Some(dept.into()),
        category_code: Some(cat.code.into()),
        subcategory_code: Some(SUBCATEGORIES[cat_index][sub_index].into()),
        relationship_label: Some(cat.labels[sub_index].into()),
        notes: Some(notes),
        tags,
        source: Some((*pick(rng, SOURCES)).into()),
        created_at: Some(created_at),
        llm_context: Some(llm_context),
        relationships: Some(Value::Array(rels)),
        communication_stats: Some(communication_stats),
        social_profiles: Some(social_profiles),
        custom_attributes: Some(custom_attributes),
        emails,
        phones,
        version: 1,
        last_updated: Some(last_updated),
        last_updated_by: Some("seed".into()),
        deleted_at: None,
        content_hash: None,
    };
    // The kept hash is of the normal form (empty JSON is absent).
    c.normalize();
    c.content_hash = Some(content_hash(&c));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_numbers() {
        let mut s = String::new();
        push_padded(&mut s, 42, 5);
        push_padded(&mut s, 0, 1);
        push_padded(&mut s, 123_456, 3);
        assert_eq!(s, "000420123456");
        assert_eq!(Generator::contact_id(7), "c000000007");
        assert_eq!(Generator::contact_id(1_234_567_890), "c1234567890");
    }
}
