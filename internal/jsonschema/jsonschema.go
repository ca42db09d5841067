// Package jsonschema validates a JSON document against the subset of JSON
// Schema that moerun's own schemas use: type (one or a list), required,
// properties, additionalProperties: false, items, enum, minimum, maximum.
// It exists so that tests can hold the bench output to schemas/ without a
// third-party validator; a keyword it does not know is an error, so that a
// schema cannot silently ask for more than is checked.
package jsonschema

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

var known = map[string]bool{
	"$schema": true, "title": true, "description": true, "type": true, "required": true,
	"properties": true, "additionalProperties": true, "items": true, "enum": true,
	"minimum": true, "maximum": true,
}

// Validate checks doc (JSON text) against schema (JSON text) and returns
// every violation, each with its JSON path.
func Validate(schema, doc []byte) error {
	var s, d any
	if err := json.Unmarshal(schema, &s); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(doc)))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		return fmt.Errorf("document: %w", err)
	}
	var errs []string
	check(s, d, "$", &errs)
	if len(errs) > 0 {
		return fmt.Errorf("%d schema violations:\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	return nil
}

func typeOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	case json.Number:
		if _, err := x.Int64(); err == nil && !strings.ContainsAny(x.String(), ".eE") {
			return "integer"
		}
		return "number"
	}
	return fmt.Sprintf("%T", v)
}

func typeMatches(want, got string) bool { return want == got || (want == "number" && got == "integer") }

func check(schemaNode, v any, path string, errs *[]string) {
	s, ok := schemaNode.(map[string]any)
	if !ok {
		*errs = append(*errs, fmt.Sprintf("%s: schema node is not an object", path))
		return
	}
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			*errs = append(*errs, fmt.Sprintf("%s: schema keyword %q is not supported by this validator", path, k))
		}
	}
	got := typeOf(v)
	if t, ok := s["type"]; ok {
		var types []string
		switch tt := t.(type) {
		case string:
			types = []string{tt}
		case []any:
			for _, x := range tt {
				types = append(types, fmt.Sprint(x))
			}
		}
		match := false
		for _, w := range types {
			match = match || typeMatches(w, got)
		}
		if !match {
			*errs = append(*errs, fmt.Sprintf("%s: is %s, want %s", path, got, strings.Join(types, " or ")))
			return
		}
	}
	if enum, ok := s["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			found = found || fmt.Sprint(e) == fmt.Sprint(v)
		}
		if !found {
			*errs = append(*errs, fmt.Sprintf("%s: %v is not one of %v", path, v, enum))
		}
	}
	if n, ok := v.(json.Number); ok {
		x, _ := n.Float64()
		if m, ok := s["minimum"].(float64); ok && !(x >= m) {
			*errs = append(*errs, fmt.Sprintf("%s: %v is below the minimum %v", path, x, m))
		}
		if m, ok := s["maximum"].(float64); ok && !(x <= m) {
			*errs = append(*errs, fmt.Sprintf("%s: %v is above the maximum %v", path, x, m))
		}
	}
	switch x := v.(type) {
	case map[string]any:
		props, _ := s["properties"].(map[string]any)
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, ok := x[fmt.Sprint(r)]; !ok {
					*errs = append(*errs, fmt.Sprintf("%s: required property %q is missing", path, r))
				}
			}
		}
		names := make([]string, 0, len(x))
		for k := range x {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if ps, ok := props[k]; ok {
				check(ps, x[k], path+"."+k, errs)
			} else if ap, ok := s["additionalProperties"].(bool); ok && !ap {
				*errs = append(*errs, fmt.Sprintf("%s: property %q is not allowed", path, k))
			}
		}
	case []any:
		if items, ok := s["items"]; ok {
			for i, e := range x {
				check(items, e, fmt.Sprintf("%s[%d]", path, i), errs)
			}
		}
	}
}
