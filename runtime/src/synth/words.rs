//! Built-in word lists for the synthetic vocabulary, most frequent first.

/// Common English words, lowercase, roughly by frequency.
pub(crate) const COMMON_WORDS: &str = "\
the of and to a in is it you that he was for on are with as i his they be at one have this \
from or had by not word but what some we can out other were all there when up use your how \
said an each she which do their time if will way about many then them write would like so \
these her long make thing see him two has look more day could go come did number sound no \
most people my over know water than call first who may down side been now find any new work \
part take get place made live where after back little only round man year came show every \
good me give our under name very through just form sentence great think say help low line \
differ turn cause much mean before move right boy old too same tell does set three want air \
well also play small end put home read hand port large spell add even land here must big \
high such follow act why ask men change went light kind off need house picture try us again \
animal point mother world near build self earth father head stand own page should country \
found answer school grow study still learn plant cover food sun four between state keep eye \
never last let thought city tree cross farm hard start might story saw far sea draw left \
late run while press close night real life few north open seem together next white children \
begin got walk example ease paper group always music those both mark often letter until mile \
river car feet care second book carry took science eat room friend began idea fish mountain \
stop once base hear horse cut sure watch color face wood main enough plain girl usual young \
ready above ever red list though feel talk bird soon body dog family direct pose leave song \
measure door product black short numeral class wind question happen complete ship area half \
rock order fire south problem piece told knew pass since top whole king space heard best hour \
better true during hundred five remember step early hold west ground interest reach fast verb \
sing listen six table travel less morning ten simple several vowel toward war lay against \
pattern slow center love person money serve appear road map rain rule govern pull cold notice \
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star \
box noun field rest correct able pound done beauty drive stood contain front teach week final \
gave green quick develop ocean warm free minute strong special mind behind clear tail produce \
fact street inch multiply nothing course stay wheel full force blue object decide surface deep \
moon island foot system busy test record boat common gold possible plane age dry wonder laugh \
thousand ago ran check game shape yes hot miss brought heat snow tire bring distant fill east \
paint language among hello capital city model token data server request response error file \
code value string number function return true false null system user assistant message chat \
answer question please thanks thank sorry okay today tomorrow yesterday computer program \
memory speed device board test";

/// Proper nouns and sentence-initial words that appear capitalized.
pub(crate) const CAPITALIZED_WORDS: &str = "\
The A I It In This That What How Why When Where Who Which You We They He She There Here Hello \
Yes No Please Thank Thanks Sorry Okay France Paris England London English Germany Berlin Spain \
Madrid Italy Rome Europe America Japan Tokyo China Beijing India Canada Brazil Africa Asia \
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June \
July August September October November December Python Rust Linux User Assistant System";

/// Common word endings and fragments, as word-internal pieces (no leading space).
pub(crate) const SUFFIXES: &str = "\
s es ed ing er est ly tion sion ment ness ful less able ible al ial ic ive ous ize ise ity ty \
ance ence ant ent ism ist ship hood dom ward wise un re in im dis pre pro con com ex";

/// Syllable onsets used to generate filler pieces.
pub(crate) const ONSETS: &[&str] = &[
    "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v", "w", "y", "z",
    "ch", "sh", "th", "st", "tr", "br", "gr", "pr", "pl", "cl", "fl", "sp", "sl", "dr", "cr", "bl", "sc",
    "wh", "ph",
];

/// Syllable nuclei used to generate filler pieces.
pub(crate) const NUCLEI: &[&str] =
    &["a", "e", "i", "o", "u", "y", "ai", "ea", "ou", "io", "ee", "oo", "ie", "au", "oi"];

/// Syllable codas used to generate filler pieces.
pub(crate) const CODAS: &[&str] = &[
    "", "n", "r", "s", "t", "l", "m", "d", "nd", "st", "ng", "ck", "x", "rt", "nt", "ll", "ss", "p", "k", "g",
];
