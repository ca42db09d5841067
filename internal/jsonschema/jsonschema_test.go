package jsonschema

import (
	"strings"
	"testing"
)

const schema = `{"type": "object", "required": ["a", "b"], "additionalProperties": false,
 "properties": {"a": {"type": "integer", "minimum": 0},
                "b": {"type": "array", "items": {"type": ["number", "null"], "maximum": 1}},
                "c": {"type": "string", "enum": ["x", "y"]}}}`

func TestValidateAcceptsConformingDocument(t *testing.T) {
	if err := Validate([]byte(schema), []byte(`{"a": 3, "b": [0.5, null, 1], "c": "y"}`)); err != nil {
		t.Fatal(err)
	}
}

func TestValidateReportsEachViolation(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"b": []}`, `required property "a"`},
		{`{"a": 1.5, "b": []}`, `$.a: is number, want integer`},
		{`{"a": -1, "b": []}`, `below the minimum`},
		{`{"a": 1, "b": [2]}`, `above the maximum`},
		{`{"a": 1, "b": ["s"]}`, `$.b[0]: is string`},
		{`{"a": 1, "b": [], "c": "z"}`, `not one of`},
		{`{"a": 1, "b": [], "d": 0}`, `"d" is not allowed`},
	} {
		err := Validate([]byte(schema), []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.doc, err, tc.want)
		}
	}
}

func TestValidateRefusesUnknownKeywords(t *testing.T) {
	err := Validate([]byte(`{"type": "object", "pattern": "x"}`), []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("unknown keyword accepted: %v", err)
	}
}
