-- 0029_arabic_letter_mark: U+061C, the Arabic letter mark, joins the characters no label
-- may hold (0023). It is one of Unicode's bidirectional controls (the Bidi_Control
-- property: U+061C, U+200E/F, U+202A-E, U+2066-9), and like U+200F it reorders the text
-- around it on a terminal; 0023 named all the others. The client refuses it first
-- (base/termtext.py, which the CLIs also use to spell it out); this is the last line.
-- Rows stored before keep working, as with 0023: the triggers check only new values.

CREATE OR REPLACE FUNCTION label_unsafe(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p ~ '[\x01-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;

CREATE OR REPLACE FUNCTION tags_suspect(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p::text ~ '[\\\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;
