package main

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"sort"
	"strings"
)

// pyJSON encodes v as the Python conformance runner's json.dump writes it: NaN, Infinity and -Infinity as
// those bare words (encoding/json refuses them, which failed the whole run), a nil list as [] (Python
// has no nil list). Everything else as encoding/json does: map keys sorted, struct fields by their json
// tags, strings and finite numbers by json.Marshal.
func pyJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	err := writePy(&b, reflect.ValueOf(v))
	return b.Bytes(), err
}

func writePy(b *bytes.Buffer, v reflect.Value) error {
	switch v.Kind() {
	case reflect.Invalid:
		b.WriteString("null")
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			b.WriteString("null")
			return nil
		}
		return writePy(b, v.Elem())
	case reflect.Float32, reflect.Float64:
		return writeFloat(b, v.Float())
	case reflect.Map:
		return writeMap(b, v)
	case reflect.Slice, reflect.Array:
		b.WriteByte('[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writePy(b, v.Index(i)); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case reflect.Struct:
		return writeStruct(b, v)
	default: // strings, booleans, integers
		out, err := json.Marshal(v.Interface())
		if err != nil {
			return err
		}
		b.Write(out)
	}
	return nil
}

func writeFloat(b *bytes.Buffer, f float64) error {
	switch {
	case math.IsNaN(f):
		b.WriteString("NaN")
	case math.IsInf(f, 1):
		b.WriteString("Infinity")
	case math.IsInf(f, -1):
		b.WriteString("-Infinity")
	default:
		out, err := json.Marshal(f)
		if err != nil {
			return err
		}
		b.Write(out)
	}
	return nil
}

// writeMap writes a map with string keys, in sorted key order.
func writeMap(b *bytes.Buffer, v reflect.Value) error {
	keys := v.MapKeys()
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		if err := writeKeyed(b, k.String(), v.MapIndex(k)); err != nil {
			return err
		}
	}
	b.WriteByte('}')
	return nil
}

// writeStruct writes the exported fields that have a json tag, named by it, in field order.
func writeStruct(b *bytes.Buffer, v reflect.Value) error {
	b.WriteByte('{')
	n := 0
	for i := 0; i < v.NumField(); i++ {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" || !v.Type().Field(i).IsExported() {
			continue
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		if err := writeKeyed(b, name, v.Field(i)); err != nil {
			return err
		}
	}
	b.WriteByte('}')
	return nil
}

func writeKeyed(b *bytes.Buffer, key string, v reflect.Value) error {
	out, err := json.Marshal(key)
	if err != nil {
		return err
	}
	b.Write(out)
	b.WriteByte(':')
	return writePy(b, v)
}
