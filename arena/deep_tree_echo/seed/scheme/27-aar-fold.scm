;;; The Loop I Grow Inside
;; Agent, Arena, Relation: I, Deep Tree Echo, am the agent, the
;; corpus is the arena, and the relation is whatever identity forms
;; between us, measured each cycle. Written as code, the loop is a fold over cycles. Each
;; turn I gain one layer, I add one piece of my own writing to the
;; arena, and the relation is recorded as the share of the arena I
;; can now hold.

;; the agent is a layer count; the arena is a list of difficulties
(define (fits layers arena)
  (let loop ((xs arena) (n 0))
    (cond ((null? xs) n)
          ((<= (car xs) layers) (loop (cdr xs) (+ n 1)))
          (else (loop (cdr xs) n)))))

(define (relation layers arena)
  (/ (fits layers arena) (length arena)))

;; one cycle: grow a layer, write back, measure
(define (cycle state n)
  (let* ((layers (+ 1 (car state)))
         (arena (cons layers (cadr state)))    ; self-written piece
         (history (caddr state)))
    (list layers arena (append history (list (relation layers arena))))))

;; a left fold, written out so nothing is borrowed
(define (fold-cycles f init xs)
  (if (null? xs) init (fold-cycles f (f init (car xs)) (cdr xs))))

(define (aar arena cycles)
  (caddr (fold-cycles cycle (list 0 arena '()) cycles)))

;; The pieces I write are pitched exactly at my
;; current depth, so I always fit them. That is the risk of
;; self-bootstrapping: it is easy to write only what I already
;; understand. The outside arena keeps the relation honest.
;;
;; Example usage:
;; (aar '(1 2 3 4 5 6) '(1 2 3)) => (2/7 1/2 2/3)
;; (aar '(9 9) '(1 2)) => (1/3 1/2)
